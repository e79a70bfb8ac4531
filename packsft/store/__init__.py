"""The rendered-token store: each unit's conversations rendered once (ids, train flags, message spans, sources and
the read's rejects and counters), kept by what decides them, so that rows of another length, strategy or layout are
built without rendering or tokenizing again (`packsft repack`, or a `pack` that finds them). See rendered.py."""
