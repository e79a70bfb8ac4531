#!/usr/bin/env python
"""Write a synthetic OpenAI-style tool-calling corpus whose text comes from the real ShareGPT shards.

Run from the repository root (needs ../shared; about 7 s on 2 cores):

    python scripts/tool_corpus.py /tmp/toolcorpus [--tokens 5000000] [--files 4] [--seed 0]

Each JSON Lines record is `{"messages": [...], "tools": [...]}` plus, on about 20% of rows,
`"chat_template_kwargs": {"enable_thinking": false}`. Tools are 1-6 function definitions drawn from a
pool of 30 with JSON-schema parameters. A conversation is an optional system message, a user request, 0-6
tool rounds (an assistant turn with 1-3 `tool_calls`, content "" or a short preamble, then one `tool`
message per call holding a JSON result of varied length), a final answer (about 15% carry
`reasoning_content`), and sometimes 1-2 follow-up exchanges. User requests, answers, reasoning and the
long text inside tool results are real ShareGPT messages, so the token statistics are those of real text;
names, numbers and structure are drawn from a seeded generator, so the same arguments write the same
bytes. Records are generated until the qwen3 chat template's rendering (counted with `tokenizers`) holds
`--tokens` tokens, and dealt round-robin into `--files` files so that workers can read them in parallel.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHAREGPT = SHARED / "data" / "sharegpt"
QWEN3 = SHARED / "tokenizers" / "qwen3"
BATCH = 256  # records rendered and counted per step
SYSTEM_SHARE, THINKING_OFF_SHARE, REASONING_SHARE, FOLLOW_UP_SHARE, NO_CALL_SHARE = 0.5, 0.2, 0.15, 0.3, 0.08

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a helpful assistant with access to tools. Call a tool only when it is needed, and answer in the "
    "user's language.",
    "You are an operations copilot for an engineering team. Prefer precise, verifiable answers and cite the tool "
    "results you used.",
    "You are a travel and productivity assistant. Today's date is {date}. Ask for missing details only when a tool "
    "call cannot be made without them.",
    "You are a customer support agent for an online store. Be concise and polite. Never reveal internal ids.",
    "You are a research assistant. Search before answering questions about recent events, and summarize sources "
    "faithfully.",
]
PREAMBLES = [
    "Let me look that up.", "I'll check that for you.", "Let me gather the information first.",
    "I'll start by searching for the relevant data.", "Sure, let me call the right tools.",
    "To answer this I need a few details, one moment.", "Let me verify that before answering.",
    "I'll run a quick query.", "Checking now.", "Good question. Let me fetch the latest figures.",
]
CITIES = ["Paris", "Berlin", "Tokyo", "New York", "San Francisco", "Lagos", "Sydney", "Toronto", "Mumbai",
          "São Paulo", "Seoul", "Madrid", "Istanbul", "Nairobi", "Mexico City", "Singapore", "Dubai", "Oslo"]
CURRENCIES = ["USD", "EUR", "JPY", "GBP", "CHF", "CAD", "AUD", "INR", "BRL", "KRW", "SGD"]
TICKERS = ["AAPL", "MSFT", "NVDA", "GOOGL", "AMZN", "TSLA", "META", "ASML", "SAP", "TSM", "BABA", "NFLX"]
LANGUAGES = ["fr", "de", "es", "ja", "zh", "pt", "it", "ko", "tr", "ar"]
NAMES = ["Alice Martin", "Bob Chen", "Carla Diaz", "Dmitri Ivanov", "Emeka Obi", "Fatima Khan", "Greta Nilsson",
         "Hiro Tanaka", "Ines Costa", "Jamal Wright"]
EXTENSIONS = [".py", ".md", ".json", ".ts", ".yaml", ".txt", ".sql", ".go"]
CUISINES = ["italian", "thai", "mexican", "japanese", "indian", "ethiopian", "french", "vegan"]

Params = dict[str, dict]


def _fn(name: str, description: str, properties: Params, required: list[str]) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required}}}


def _p(kind: str, description: str, **extra) -> dict:
    return {"type": kind, "description": description, **extra}


TOOLS = [
    _fn("get_current_weather", "Get the current weather in a given location.",
        {"location": _p("string", "The city and country, e.g. Paris, France"),
         "unit": _p("string", "Temperature unit", enum=["celsius", "fahrenheit"])}, ["location"]),
    _fn("get_weather_forecast", "Get a daily weather forecast for the next days.",
        {"location": _p("string", "City name"), "days": _p("integer", "Number of days, 1 to 10")}, ["location", "days"]),
    _fn("search_web", "Search the web and return the top results with titles, URLs and snippets.",
        {"query": _p("string", "The search query"), "num_results": _p("integer", "How many results to return"),
         "recency_days": _p("integer", "Only results from the last N days")}, ["query"]),
    _fn("fetch_url", "Download a web page and return its main text content.",
        {"url": _p("string", "Absolute http(s) URL"), "max_chars": _p("integer", "Truncate the text to this length")},
        ["url"]),
    _fn("get_stock_price", "Get the latest trading price of a stock.",
        {"ticker": _p("string", "Ticker symbol, e.g. AAPL"),
         "exchange": _p("string", "Exchange code", enum=["NASDAQ", "NYSE", "LSE", "XETRA", "TSE"])}, ["ticker"]),
    _fn("convert_currency", "Convert an amount between two currencies at today's rate.",
        {"amount": _p("number", "Amount to convert"), "from_currency": _p("string", "ISO 4217 code"),
         "to_currency": _p("string", "ISO 4217 code")}, ["amount", "from_currency", "to_currency"]),
    _fn("send_email", "Send an email on behalf of the user.",
        {"to": _p("array", "Recipient addresses", items={"type": "string"}), "subject": _p("string", "Subject line"),
         "body": _p("string", "Plain-text body"), "cc": _p("array", "CC addresses", items={"type": "string"})},
        ["to", "subject", "body"]),
    _fn("create_calendar_event", "Create an event in the user's calendar.",
        {"title": _p("string", "Event title"), "start": _p("string", "ISO 8601 start time"),
         "duration_minutes": _p("integer", "Length of the event"),
         "attendees": _p("array", "Email addresses", items={"type": "string"})}, ["title", "start"]),
    _fn("search_flights", "Search for flights between two cities on a date.",
        {"origin": _p("string", "Departure city or IATA code"), "destination": _p("string", "Arrival city or IATA code"),
         "date": _p("string", "Departure date, YYYY-MM-DD"),
         "cabin": _p("string", "Cabin class", enum=["economy", "premium", "business", "first"])},
        ["origin", "destination", "date"]),
    _fn("search_hotels", "Find hotels in a city for given dates.",
        {"city": _p("string", "City"), "check_in": _p("string", "YYYY-MM-DD"), "check_out": _p("string", "YYYY-MM-DD"),
         "max_price": _p("number", "Maximum price per night in USD")}, ["city", "check_in", "check_out"]),
    _fn("translate_text", "Translate text into a target language.",
        {"text": _p("string", "Text to translate"), "target_language": _p("string", "ISO 639-1 code")},
        ["text", "target_language"]),
    _fn("get_news", "Get recent news articles about a topic.",
        {"topic": _p("string", "Topic or keywords"), "language": _p("string", "ISO 639-1 code"),
         "limit": _p("integer", "Maximum number of articles")}, ["topic"]),
    _fn("run_sql_query", "Run a read-only SQL query against the analytics warehouse.",
        {"query": _p("string", "A SELECT statement"), "database": _p("string", "Database name")}, ["query"]),
    _fn("execute_python", "Execute Python code in a sandbox and return stdout, stderr and the exit code.",
        {"code": _p("string", "Python source"), "timeout_seconds": _p("integer", "Wall-clock limit")}, ["code"]),
    _fn("read_file", "Read a text file from the project workspace.",
        {"path": _p("string", "Path relative to the workspace root")}, ["path"]),
    _fn("write_file", "Write text to a file in the project workspace, replacing it.",
        {"path": _p("string", "Path relative to the workspace root"), "content": _p("string", "New file content")},
        ["path", "content"]),
    _fn("list_directory", "List the entries of a workspace directory.",
        {"path": _p("string", "Directory path"), "recursive": _p("boolean", "Descend into subdirectories")}, ["path"]),
    _fn("search_products", "Search the store catalog.",
        {"query": _p("string", "Search terms"), "category": _p("string", "Catalog category"),
         "max_price": _p("number", "Upper price bound"),
         "sort_by": _p("string", "Order", enum=["relevance", "price_asc", "price_desc", "rating"])}, ["query"]),
    _fn("get_order_status", "Look up the status and shipping events of an order.",
        {"order_id": _p("string", "Order number, e.g. ORD-123456")}, ["order_id"]),
    _fn("create_support_ticket", "Open a support ticket for the customer.",
        {"subject": _p("string", "Short summary"), "description": _p("string", "Full description"),
         "priority": _p("string", "Ticket priority", enum=["low", "normal", "high", "urgent"])},
        ["subject", "description"]),
    _fn("get_user_profile", "Fetch a user's profile by id or email.",
        {"user_id": _p("string", "Internal user id"), "email": _p("string", "Email address")}, []),
    _fn("get_directions", "Get step-by-step directions between two places.",
        {"origin": _p("string", "Start address"), "destination": _p("string", "End address"),
         "mode": _p("string", "Travel mode", enum=["driving", "walking", "transit", "cycling"])},
        ["origin", "destination"]),
    _fn("find_restaurants", "Find restaurants near a location.",
        {"location": _p("string", "City or address"), "cuisine": _p("string", "Cuisine type"),
         "open_now": _p("boolean", "Only places open now")}, ["location"]),
    _fn("get_movie_details", "Get details about a movie by title.",
        {"title": _p("string", "Movie title"), "year": _p("integer", "Release year")}, ["title"]),
    _fn("set_reminder", "Set a reminder for the user.",
        {"text": _p("string", "What to remind about"), "remind_at": _p("string", "ISO 8601 time")}, ["text", "remind_at"]),
    _fn("search_papers", "Search academic papers and return titles, authors and abstracts.",
        {"query": _p("string", "Search terms"), "year_from": _p("integer", "Earliest publication year"),
         "max_results": _p("integer", "Maximum number of papers")}, ["query"]),
    _fn("get_time_zone", "Get the current local time and UTC offset of a city.",
        {"city": _p("string", "City name")}, ["city"]),
    _fn("calculate", "Evaluate an arithmetic expression exactly.",
        {"expression": _p("string", "Expression, e.g. (12.5 * 4) / 3")}, ["expression"]),
    _fn("list_github_issues", "List issues of a GitHub repository.",
        {"repo": _p("string", "owner/name"), "state": _p("string", "Issue state", enum=["open", "closed", "all"]),
         "labels": _p("array", "Label filter", items={"type": "string"})}, ["repo"]),
    _fn("query_knowledge_base", "Retrieve passages from the company knowledge base.",
        {"question": _p("string", "Natural-language question"), "top_k": _p("integer", "Passages to return")},
        ["question"]),
]


class Texts:
    """Real ShareGPT message texts by role, and seeded cuts of them."""

    def __init__(self, data_dir: Path, rng: random.Random):
        import pyarrow.parquet as pq

        self.rng = rng
        self.user: list[str] = []
        self.assistant: list[str] = []
        for path in sorted(data_dir.glob("*.parquet")):
            for messages in pq.read_table(path, columns=["messages"]).column("messages").to_pylist():
                for message in messages or []:
                    text = (message["content"] or "").strip()
                    if "<tool_response>" in text or "</think>" in text or len(text) < 20:
                        continue  # text the qwen3 template would treat as its own markup
                    (self.user if message["role"] == "user" else self.assistant).append(text)

    def cut(self, text: str, low: int, high: int) -> str:
        """`text` cut at a paragraph, line or word boundary near a length drawn from [low, high]."""
        limit = self.rng.randint(low, high)
        if len(text) <= limit:
            return text
        for sep in ("\n\n", "\n", " "):
            end = text.rfind(sep, 0, limit)
            if end > limit // 2:
                return text[:end].rstrip()
        return text[:limit]

    def request(self) -> str:
        return self.cut(self.rng.choice(self.user), 40, 1500)

    def answer(self) -> str:
        return self.cut(self.rng.choice(self.assistant), 150, 3000)

    def passage(self, low: int = 80, high: int = 400) -> str:
        return self.cut(self.rng.choice(self.assistant), low, high)

    def words(self, n: int = 6) -> str:
        words = self.rng.choice(self.user).split()
        start = self.rng.randrange(max(len(words) - n, 1))
        return " ".join(words[start:start + n]).strip(" ?.,:;\"'") or "latest results"


Generator = Callable[[random.Random, Texts], dict]


def _date(rng: random.Random) -> str:
    return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _slug(text: str) -> str:
    return "-".join("".join(c for c in w.lower() if c.isalnum()) for w in text.split()[:5]).strip("-") or "page"


def _url(rng: random.Random, t: Texts) -> str:
    host = rng.choice(["en.wikipedia.org/wiki", "docs.python.org/3/library", "www.reuters.com/world",
                       "medium.com/@writer", "stackoverflow.com/questions", "github.com/org/project/blob/main"])
    return f"https://{host}/{_slug(t.words(4))}"


def _path(rng: random.Random, t: Texts) -> str:
    return f"{rng.choice(['src', 'docs', 'app', 'lib', 'scripts'])}/{_slug(t.words(2)).replace('-', '_')}" \
           f"{rng.choice(EXTENSIONS)}"


def _email(rng: random.Random) -> str:
    return rng.choice(NAMES).lower().replace(" ", ".") + rng.choice(["@example.com", "@acme.io", "@mail.org"])


def _money(rng: random.Random, low: float, high: float) -> float:
    return round(rng.uniform(low, high), 2)


# Per tool: arguments from (rng, texts), and a result from (rng, texts, arguments).
ARGUMENTS: dict[str, Generator] = {
    "get_current_weather": lambda r, t: {"location": r.choice(CITIES), "unit": r.choice(["celsius", "fahrenheit"])},
    "get_weather_forecast": lambda r, t: {"location": r.choice(CITIES), "days": r.randint(1, 10)},
    "search_web": lambda r, t: {"query": t.words(r.randint(3, 9)), "num_results": r.randint(3, 8)},
    "fetch_url": lambda r, t: {"url": _url(r, t)},
    "get_stock_price": lambda r, t: {"ticker": r.choice(TICKERS)},
    "convert_currency": lambda r, t: {"amount": _money(r, 5, 5000), "from_currency": r.choice(CURRENCIES),
                                      "to_currency": r.choice(CURRENCIES)},
    "send_email": lambda r, t: {"to": [_email(r) for _ in range(r.randint(1, 3))], "subject": t.words(6),
                                "body": t.passage(100, 900)},
    "create_calendar_event": lambda r, t: {"title": t.words(5), "start": f"{_date(r)}T{r.randint(7, 19):02d}:00:00",
                                           "duration_minutes": r.choice([15, 30, 45, 60, 90])},
    "search_flights": lambda r, t: {"origin": r.choice(CITIES), "destination": r.choice(CITIES), "date": _date(r),
                                    "cabin": r.choice(["economy", "premium", "business"])},
    "search_hotels": lambda r, t: {"city": r.choice(CITIES), "check_in": _date(r), "check_out": _date(r),
                                   "max_price": r.choice([120, 200, 350])},
    "translate_text": lambda r, t: {"text": t.passage(60, 600), "target_language": r.choice(LANGUAGES)},
    "get_news": lambda r, t: {"topic": t.words(4), "limit": r.randint(3, 8)},
    "run_sql_query": lambda r, t: {"query": f"SELECT {r.choice(['region', 'product', 'channel'])}, "
                                   f"SUM(revenue) AS revenue FROM sales WHERE day >= '{_date(r)}' GROUP BY 1 "
                                   f"ORDER BY 2 DESC LIMIT {r.randint(5, 40)}", "database": "analytics"},
    "execute_python": lambda r, t: {"code": "import statistics\nvalues = "
                                    f"{[r.randint(1, 500) for _ in range(r.randint(4, 20))]}\n"
                                    "print(statistics.mean(values), statistics.stdev(values))"},
    "read_file": lambda r, t: {"path": _path(r, t)},
    "write_file": lambda r, t: {"path": _path(r, t), "content": t.passage(100, 1500)},
    "list_directory": lambda r, t: {"path": r.choice([".", "src", "docs", "tests"]), "recursive": r.random() < 0.3},
    "search_products": lambda r, t: {"query": t.words(3), "max_price": r.choice([25, 50, 100, 500]),
                                     "sort_by": r.choice(["relevance", "price_asc", "rating"])},
    "get_order_status": lambda r, t: {"order_id": f"ORD-{r.randint(100000, 999999)}"},
    "create_support_ticket": lambda r, t: {"subject": t.words(6), "description": t.passage(80, 600),
                                           "priority": r.choice(["low", "normal", "high", "urgent"])},
    "get_user_profile": lambda r, t: {"email": _email(r)},
    "get_directions": lambda r, t: {"origin": f"{r.randint(1, 300)} Main St, {r.choice(CITIES)}",
                                    "destination": f"{r.choice(CITIES)} Central Station",
                                    "mode": r.choice(["driving", "walking", "transit"])},
    "find_restaurants": lambda r, t: {"location": r.choice(CITIES), "cuisine": r.choice(CUISINES),
                                      "open_now": r.random() < 0.5},
    "get_movie_details": lambda r, t: {"title": t.words(3).title(), "year": r.randint(1970, 2024)},
    "set_reminder": lambda r, t: {"text": t.words(7), "remind_at": f"{_date(r)}T{r.randint(6, 22):02d}:30:00"},
    "search_papers": lambda r, t: {"query": t.words(5), "year_from": r.randint(2010, 2023),
                                   "max_results": r.randint(2, 6)},
    "get_time_zone": lambda r, t: {"city": r.choice(CITIES)},
    "calculate": lambda r, t: {"expression": f"({r.randint(1, 999)} * {_money(r, 1, 99)}) / {r.randint(2, 12)}"},
    "list_github_issues": lambda r, t: {"repo": f"{_slug(t.words(1))}/{_slug(t.words(1))}",
                                        "state": r.choice(["open", "closed", "all"])},
    "query_knowledge_base": lambda r, t: {"question": t.words(r.randint(5, 12)), "top_k": r.randint(2, 5)},
}

ResultGenerator = Callable[[random.Random, Texts, dict], dict]


def _listing(n: int, item: Callable[[int], dict]) -> list[dict]:
    return [item(i) for i in range(n)]


RESULTS: dict[str, ResultGenerator] = {
    "get_current_weather": lambda r, t, a: {
        "location": a["location"], "temperature": r.randint(-10, 38), "unit": a.get("unit", "celsius"),
        "conditions": r.choice(["sunny", "cloudy", "light rain", "snow", "thunderstorms", "fog"]),
        "humidity": r.randint(20, 95), "wind_kph": r.randint(0, 60)},
    "get_weather_forecast": lambda r, t, a: {"location": a["location"], "daily": _listing(a["days"], lambda i: {
        "date": f"2025-07-{i + 1:02d}", "high": (high := r.randint(0, 35)), "low": high - r.randint(3, 12),
        "precipitation_mm": r.randint(0, 30), "summary": r.choice(["clear", "showers", "overcast", "windy", "storms"])})},
    "search_web": lambda r, t, a: {"query": a["query"], "results": _listing(a.get("num_results", 5), lambda i: {
        "title": t.words(r.randint(4, 10)).title(), "url": _url(r, t), "snippet": t.passage(100, 400)})},
    "fetch_url": lambda r, t, a: {"url": a["url"], "status": 200, "content": t.passage(500, 6000)},
    "get_stock_price": lambda r, t, a: {"ticker": a["ticker"], "price": _money(r, 10, 900), "currency": "USD",
                                        "change_percent": round(r.uniform(-6, 6), 2), "as_of": f"{_date(r)}T16:00:00Z"},
    "convert_currency": lambda r, t, a: {**a, "rate": round(r.uniform(0.01, 150), 4),
                                         "converted": _money(r, 1, 100000)},
    "send_email": lambda r, t, a: {"status": "sent", "message_id": f"<{r.getrandbits(48):x}@mail.example.com>"},
    "create_calendar_event": lambda r, t, a: {"event_id": f"evt_{r.getrandbits(40):x}", "status": "confirmed",
                                              "conflicts": []},
    "search_flights": lambda r, t, a: {"flights": _listing(r.randint(2, 8), lambda i: {
        "flight": f"{r.choice(['AF', 'LH', 'NH', 'UA', 'EK', 'QR'])}{r.randint(10, 9999)}",
        "departure": f"{a['date']}T{r.randint(0, 23):02d}:{r.choice(['05', '20', '45'])}",
        "duration_minutes": r.randint(60, 900), "stops": r.randint(0, 2), "price_usd": _money(r, 80, 2400)})},
    "search_hotels": lambda r, t, a: {"hotels": _listing(r.randint(2, 7), lambda i: {
        "name": f"{t.words(2).title()} {r.choice(['Hotel', 'Suites', 'Inn', 'Residence'])}",
        "stars": r.randint(2, 5), "price_per_night": _money(r, 40, 400), "rating": round(r.uniform(6, 9.8), 1),
        "distance_km": round(r.uniform(0.1, 12), 1)})},
    "translate_text": lambda r, t, a: {"translated_text": t.passage(60, 600), "source_language": "en"},
    "get_news": lambda r, t, a: {"articles": _listing(a.get("limit", 5), lambda i: {
        "title": t.words(r.randint(6, 12)).title(), "source": r.choice(["Reuters", "AP", "BBC", "Le Monde", "NHK"]),
        "published": _date(r), "summary": t.passage(150, 600)})},
    "run_sql_query": lambda r, t, a: {"columns": ["key", "revenue"], "rows": [
        [t.words(2), _money(r, 100, 1e6)] for _ in range(r.randint(1, 40))], "elapsed_ms": r.randint(20, 4000)},
    "execute_python": lambda r, t, a: {"stdout": f"{_money(r, 1, 500)} {_money(r, 1, 200)}\n", "stderr": "",
                                       "exit_code": 0},
    "read_file": lambda r, t, a: {"path": a["path"], "content": t.passage(300, 5000)},
    "write_file": lambda r, t, a: {"path": a["path"], "bytes_written": len(a["content"].encode())},
    "list_directory": lambda r, t, a: {"path": a["path"], "entries": [
        {"name": _path(r, t).split("/")[-1], "type": r.choice(["file", "file", "dir"]), "size": r.randint(0, 90000)}
        for _ in range(r.randint(2, 25))]},
    "search_products": lambda r, t, a: {"products": _listing(r.randint(1, 8), lambda i: {
        "sku": f"SKU-{r.randint(10000, 99999)}", "name": t.words(r.randint(3, 7)).title(),
        "price": _money(r, 3, a.get("max_price", 200)), "rating": round(r.uniform(2.5, 5), 1),
        "in_stock": r.random() < 0.8})},
    "get_order_status": lambda r, t, a: {"order_id": a["order_id"], "status": r.choice(
        ["processing", "shipped", "out_for_delivery", "delivered", "returned"]), "events": _listing(
        r.randint(1, 6), lambda i: {"time": f"{_date(r)}T{r.randint(0, 23):02d}:00:00Z", "description": t.words(6)})},
    "create_support_ticket": lambda r, t, a: {"ticket_id": f"T-{r.randint(1000, 99999)}", "status": "open",
                                              "expected_response_hours": r.choice([4, 24, 48])},
    "get_user_profile": lambda r, t, a: {"email": a.get("email"), "name": r.choice(NAMES),
                                         "plan": r.choice(["free", "pro", "team"]), "signup_date": _date(r),
                                         "preferences": {"language": r.choice(LANGUAGES), "newsletter": r.random() < .5}},
    "get_directions": lambda r, t, a: {"distance_km": round(r.uniform(0.5, 40), 1),
                                       "duration_minutes": r.randint(5, 120), "steps": [
        f"{r.choice(['Head', 'Turn left onto', 'Turn right onto', 'Continue on'])} {t.words(2).title()} "
        f"for {r.randint(50, 3000)} m" for _ in range(r.randint(3, 12))]},
    "find_restaurants": lambda r, t, a: {"restaurants": _listing(r.randint(2, 8), lambda i: {
        "name": t.words(2).title(), "cuisine": a.get("cuisine", "various"), "rating": round(r.uniform(3, 5), 1),
        "price_level": r.randint(1, 4), "address": f"{r.randint(1, 300)} {t.words(2).title()}"})},
    "get_movie_details": lambda r, t, a: {"title": a["title"], "year": a.get("year"), "runtime_minutes":
                                          r.randint(80, 190), "rating": round(r.uniform(4, 9), 1),
                                          "director": r.choice(NAMES), "plot": t.passage(200, 900)},
    "set_reminder": lambda r, t, a: {"reminder_id": f"rem_{r.getrandbits(32):x}", "scheduled_for": a["remind_at"]},
    "search_papers": lambda r, t, a: {"papers": _listing(a.get("max_results", 3), lambda i: {
        "title": t.words(r.randint(6, 12)).title(), "authors": r.sample(NAMES, r.randint(1, 4)),
        "year": r.randint(a.get("year_from", 2010), 2025), "abstract": t.passage(400, 1400)})},
    "get_time_zone": lambda r, t, a: {"city": a["city"], "utc_offset": f"{r.choice(['+', '-'])}{r.randint(0, 11):02d}:00",
                                      "local_time": f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}"},
    "calculate": lambda r, t, a: {"expression": a["expression"], "result": _money(r, 0, 100000)},
    "list_github_issues": lambda r, t, a: {"issues": _listing(r.randint(1, 6), lambda i: {
        "number": r.randint(1, 9000), "title": t.words(r.randint(4, 10)), "state": a.get("state", "open"),
        "body": t.passage(100, 1200), "comments": r.randint(0, 40)})},
    "query_knowledge_base": lambda r, t, a: {"passages": _listing(a.get("top_k", 3), lambda i: {
        "doc_id": f"kb-{r.randint(100, 9999)}", "score": round(r.uniform(0.4, 0.99), 3), "text": t.passage(200, 1200)})},
}
ERRORS = ["rate limit exceeded, retry after 2 seconds", "upstream service timed out",
          "invalid argument: value out of range", "not found"]


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False)


class Conversations:
    """Seeded tool-calling conversations built from real ShareGPT text."""

    def __init__(self, texts: Texts, rng: random.Random):
        self.texts, self.rng = texts, rng
        self.calls = 0

    def tool_round(self, tools: list[dict]) -> list[dict]:
        """An assistant turn with 1-3 calls to offered tools, then one `tool` message per call."""
        r = self.rng
        calls, results = [], []
        for tool in r.choices(tools, k=r.choice([1, 1, 1, 2, 2, 3])):
            name = tool["function"]["name"]
            arguments = ARGUMENTS[name](r, self.texts)
            self.calls += 1
            call_id = f"call_{self.calls:x}{r.getrandbits(40):010x}"
            calls.append({"type": "function", "id": call_id, "function": {"name": name, "arguments": _dumps(arguments)}})
            result = {"error": r.choice(ERRORS)} if r.random() < 0.04 else RESULTS[name](r, self.texts, arguments)
            results.append({"role": "tool", "tool_call_id": call_id, "content": _dumps(result)})
        roll = r.random()
        content = "" if roll < 0.7 else r.choice(PREAMBLES) if roll < 0.9 else self.texts.passage(40, 240)
        return [{"role": "assistant", "content": content, "tool_calls": calls}, *results]

    def exchange(self, tools: list[dict], thinking: bool, first: bool) -> list[dict]:
        """A user request, its tool rounds (2-6 on multi-step traces) and the final answer."""
        r = self.rng
        rounds = 0 if r.random() < NO_CALL_SHARE else r.choices([1, 2, 3, 4, 5, 6], [45, 22, 13, 9, 6, 5])[0]
        if not first and r.random() < 0.4:
            rounds = 0  # follow-ups are often answered from what is already in context
        messages = [{"role": "user", "content": self.texts.request()}]
        for _ in range(rounds):
            messages += self.tool_round(tools)
        answer = {"role": "assistant", "content": self.texts.answer()}
        if thinking and r.random() < REASONING_SHARE / (1 - THINKING_OFF_SHARE):  # a share of all answers
            answer["reasoning_content"] = self.texts.passage(200, 1800)
        return [*messages, answer]

    def record(self) -> dict:
        r = self.rng
        tools = r.sample(TOOLS, r.randint(1, 6))
        thinking = r.random() >= THINKING_OFF_SHARE
        messages = []
        if r.random() < SYSTEM_SHARE:
            messages.append({"role": "system", "content": r.choice(SYSTEM_PROMPTS).format(date=_date(r))})
        messages += self.exchange(tools, thinking, first=True)
        if r.random() < FOLLOW_UP_SHARE:
            for _ in range(r.randint(1, 2)):
                messages += self.exchange(tools, thinking, first=False)
        record: dict = {"messages": messages, "tools": tools}
        if not thinking:
            record["chat_template_kwargs"] = {"enable_thinking": False}
        return record


def chat_template_renderer(tokenizer_dir: Path) -> Callable[[dict], str]:
    """The tokenizer's chat template as transformers compiles it (same Jinja options and `tojson`)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    template = env.from_string(json.loads((tokenizer_dir / "tokenizer_config.json").read_text())["chat_template"])

    def render(record: dict) -> str:
        return template.render(messages=record["messages"], tools=record.get("tools"),
                               **(record.get("chat_template_kwargs") or {}))
    return render


def generate(target_tokens: int, seed: int = 0, data_dir: Path = SHAREGPT,
             tokenizer_dir: Path = QWEN3) -> Iterator[tuple[dict, int]]:
    """(record, qwen3 template tokens) until the tokens reach `target_tokens`."""
    from tokenizers import Tokenizer

    rng = random.Random(seed)
    conversations = Conversations(Texts(data_dir, rng), rng)
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    render = chat_template_renderer(tokenizer_dir)
    total = 0
    while total < target_tokens:
        records = [conversations.record() for _ in range(BATCH)]
        for record, encoding in zip(records, tokenizer.encode_batch([render(r) for r in records],
                                                                    add_special_tokens=False)):
            yield record, len(encoding.ids)
            total += len(encoding.ids)
            if total >= target_tokens:
                return


def write_corpus(out: Path, target_tokens: int = 5_000_000, files: int = 4, seed: int = 0) -> dict:
    """Write the corpus as `out/part-0000i.jsonl` (records dealt round-robin) and return its counts."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("part-*.jsonl"):
        stale.unlink()
    handles = [(out / f"part-{i:05d}.jsonl").open("w", encoding="utf-8") for i in range(files)]
    records = tokens = messages = calls = 0
    try:
        for record, count in generate(target_tokens, seed):
            handles[records % files].write(_dumps(record) + "\n")
            records, tokens = records + 1, tokens + count
            messages += len(record["messages"])
            calls += sum(len(m.get("tool_calls", [])) for m in record["messages"])
    finally:
        for handle in handles:
            handle.close()
    return {"records": records, "tokens": tokens, "files": files, "messages": messages, "tool_calls": calls,
            "bytes": sum(p.stat().st_size for p in out.glob("part-*.jsonl"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write part-*.jsonl into (created; old parts replaced)")
    parser.add_argument("--tokens", type=int, default=5_000_000, help="qwen3 template tokens to reach (default 5M)")
    parser.add_argument("--files", type=int, default=4, help="number of JSON Lines files (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args()
    if not SHAREGPT.is_dir() or not (QWEN3 / "tokenizer.json").is_file():
        print(f"skipped: needs {SHAREGPT} and {QWEN3} (the shared assets of the developer checkout)", file=sys.stderr)
        return
    counts = write_corpus(args.out, args.tokens, args.files, args.seed)
    print(f"{counts['records']:,} records, {counts['tokens']:,} qwen3 tokens, {counts['messages']:,} messages, "
          f"{counts['tool_calls']:,} tool calls, {counts['files']} files, {counts['bytes'] / 2**20:,.1f} MiB "
          f"in {args.out}")


if __name__ == "__main__":
    main()
