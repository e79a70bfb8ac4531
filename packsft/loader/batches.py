"""The thin loader: packed rows onto the device, disjoint across ranks, exactly resumable, mixable.

Needs PyTorch (`pip install -e '.[torch]'` in the checkout); importing this module does not, constructing does.

    epoch e order (seeded permutation of all rows, the same on every rank)
    |-------- step 0 --------|-------- step 1 --------| ...   global batch = batch_size x world_size
    | rank 0 | rank 1 | ...  | rank 0 | rank 1 | ...  |
          |
          v  background thread: pread rows (in row order) into reusable host buffers, stored dtypes
    tokens (B, L+1) uint16|uint32, loss_mask (B, L) uint8   (pinned when the device is CUDA)
          |
          v  main thread: copy non_blocking, widen on the device (loader/dataset.py: training_fields)
    label_layout="hf":      input_ids, labels (-100 where untrained; the model shifts), shift_labels  int64 [B, L]
    label_layout="shifted": input_ids = tokens[:, :-1], labels = tokens[:, 1:]  int64 [B, L];  loss_mask float32
    segments=True adds position_ids int64 [B, L], cu_seqlens int32 [S+1], max_seqlen int

Shipping the compact dtypes moves 4x (uint16) fewer bytes to the device than int64.
With `segments=True` the segments of a batch tile it: each stored conversation piece (cut to the
row's L inputs) is one segment, and the padding after a row's last piece is one more segment whose
position_ids restart at 0 (pads are never trained; this only keeps cu_seqlens covering all B*L
tokens, as FlashAttention's varlen functions expect of a flattened batch).

State (`state_dict`) lives in the main process and counts the batches handed out, not the ones
prefetched, so a checkpoint taken between steps resumes exactly at the next batch.
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from packsft.errors import ConfigError
from packsft.loader.dataset import (
    LabelLayout,
    PackedDataset,
    check_label_layout,
    torch_module,
    training_fields,
)
from packsft.loader.gather import batch_segments

POLL_SECONDS = 0.1  # how often a blocked background thread checks whether the loop was abandoned
_DONE = object()


@dataclass
class Step:
    which: np.ndarray  # dataset index of each row of this rank's batch
    rows: np.ndarray  # row index within that dataset
    state: dict[str, Any]  # the loader's state once this batch has been handed out


@dataclass
class _Slot:
    tokens: np.ndarray
    mask: np.ndarray
    host_tokens: Any  # torch views of the same memory (pinned when copying to CUDA)
    host_mask: Any
    event: Any = None  # CUDA event: the last copy out of this slot has finished


class Ready(NamedTuple):
    """A batch handed from the background thread to the training loop, in order."""

    batch: dict[str, Any] | None  # already widened on the host (CPU device), else None
    slot: _Slot | None  # rows still to copy to the device (non-CPU device), else None
    rows: int
    cu_seqlens: np.ndarray | None
    state: dict[str, Any]  # the loader's state once this batch has been handed out


class BatchLoader:
    """What PackedLoader and MixtureLoader share: arguments, the background thread, the device side."""

    def __init__(self, datasets: list[PackedDataset], batch_size: int, rank: int, world_size: int, seed: int,
                 device: Any, pin_memory: bool | None, prefetch: int, segments: bool,
                 label_layout: LabelLayout) -> None:
        torch = torch_module()
        check_label_layout(label_layout)
        self.label_layout = label_layout
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or prefetch < 1:
            raise ConfigError(f"need batch_size >= 1, world_size >= 1, 0 <= rank < world_size and prefetch >= 1; "
                              f"got batch_size={batch_size}, rank={rank}, world_size={world_size}, prefetch={prefetch}")
        self.datasets, self.batch_size, self.rank, self.world_size = datasets, batch_size, rank, world_size
        self.seed, self.prefetch, self.segments = seed, prefetch, segments
        self.seq_length, self.dtype = datasets[0].seq_length, datasets[0].dtype
        self.device = torch.device(device if device is not None else "cpu")
        wanted = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.pin_memory = bool(wanted) and self.device.type == "cuda"  # pinning only speeds up copies to CUDA
        if segments:  # read the piece tables now, not in the middle of the first epoch
            for dataset in datasets:
                dataset.reader.piece_table()

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def _steps(self) -> Iterator[Step]:
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _new_slot(self) -> _Slot:
        torch = torch_module()
        shapes = ((self.batch_size, self.seq_length + 1), (self.batch_size, self.seq_length))
        if self.pin_memory:
            host = [torch.empty(shape, dtype=dtype, pin_memory=True)
                    for shape, dtype in zip(shapes, (getattr(torch, self.dtype.name), torch.uint8))]
            return _Slot(host[0].numpy(), host[1].numpy(), host[0], host[1])
        tokens, mask = np.empty(shapes[0], self.dtype), np.empty(shapes[1], np.uint8)
        return _Slot(tokens, mask, torch.from_numpy(tokens), torch.from_numpy(mask))

    def _fill(self, slot: _Slot, step: Step) -> np.ndarray | None:
        """Read a step's rows into a slot; returns cu_seqlens when segments are asked for."""
        if slot.event is not None:
            slot.event.synchronize()  # the device may still be copying this slot's previous batch
        bounds = []
        for index in np.unique(step.which).tolist():
            at = np.flatnonzero(step.which == index)
            reader = self.datasets[index].reader
            reader.read(step.rows[at], slot.tokens, slot.mask, at)
            if self.segments:
                bounds.append(reader.piece_bounds(step.rows[at], at, self.seq_length))
        if not self.segments:
            return None
        return batch_segments(np.concatenate([np.zeros(0, np.int64), *bounds]), len(step.rows), self.seq_length)

    def _widen_on_host(self, slot: _Slot, rows: int, cu_seqlens: np.ndarray | None) -> dict[str, Any]:
        """The batch for a CPU device, built in the background thread (torch's casts drop the GIL)."""
        torch = torch_module()
        batch: dict[str, Any] = training_fields(slot.host_tokens[:rows], slot.host_mask[:rows], self.label_layout)
        if cu_seqlens is not None:
            starts = np.repeat(cu_seqlens[:-1].astype(np.int64), np.diff(cu_seqlens))
            positions = (np.arange(rows * self.seq_length) - starts).reshape(rows, self.seq_length)
            batch["position_ids"] = torch.from_numpy(positions)
            batch["cu_seqlens"] = torch.from_numpy(cu_seqlens)
            batch["max_seqlen"] = int(np.diff(cu_seqlens).max()) if rows else 0
        return batch

    def _produce(self, ready: queue.Queue, free: queue.Queue, stop: threading.Event) -> None:
        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    return ready.put(item, timeout=POLL_SECONDS)
                except queue.Full:
                    pass

        try:
            for step in self._steps():
                slot = None
                while slot is None and not stop.is_set():
                    try:
                        slot = free.get(timeout=POLL_SECONDS)
                    except queue.Empty:
                        pass
                if slot is None:
                    return
                rows, cu_seqlens = len(step.rows), self._fill(slot, step)
                if self.device.type == "cpu":
                    batch = self._widen_on_host(slot, rows, cu_seqlens)
                    free.put(slot)
                    put(Ready(batch, None, rows, None, step.state))
                else:
                    put(Ready(None, slot, rows, cu_seqlens, step.state))
            put(_DONE)
        except BaseException as exc:  # handed to the main thread, which raises it
            put(exc)

    def _to_device(self, slot: _Slot, rows: int, cu_seqlens: np.ndarray | None) -> dict[str, Any]:
        """Copy a slot in its stored dtypes to the (non-CPU) device, then widen there."""
        torch = torch_module()
        length, device = self.seq_length, self.device
        tokens = slot.host_tokens[:rows].to(device, non_blocking=True)
        mask = slot.host_mask[:rows].to(device, non_blocking=True)
        if device.type == "cuda":
            slot.event = torch.cuda.Event()
            slot.event.record()
        batch: dict[str, Any] = training_fields(tokens, mask, self.label_layout)
        if cu_seqlens is not None:
            cu = torch.from_numpy(cu_seqlens).to(device)
            starts = torch.repeat_interleave(cu[:-1].long(), cu.diff(), output_size=rows * length)
            batch["position_ids"] = (torch.arange(rows * length, device=device) - starts).view(rows, length)
            batch["cu_seqlens"] = cu
            batch["max_seqlen"] = int(np.diff(cu_seqlens).max()) if rows else 0
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        free: queue.Queue = queue.Queue()
        for _ in range(self.prefetch + 2):  # prefetched + one being filled + one being copied
            free.put(self._new_slot())
        reader = _BackgroundReader(self._produce, ready, free)
        try:
            while (item := ready.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                batch = item.batch
                if item.slot is not None:
                    batch = self._to_device(item.slot, item.rows, item.cu_seqlens)
                    free.put(item.slot)
                self._set_state(item.state)
                yield batch
        finally:  # the loop ended, broke, raised, or the iterator was dropped (closed by the collector)
            reader.close()


class _BackgroundReader:
    """The thread that fills batches for one iteration, stopped and joined before the interpreter exits.

    A daemon thread still running when Python finalizes is killed inside whatever C++ call it is in,
    and the process aborts (`terminate called without an active exception`, exit 134): the common
    `it = iter(loader); next(it)` per step, then exit at max_steps, did that. So every reader is also
    closed from an atexit hook, which runs while threads can still finish; the hook is registered
    with the first reader, after torch was imported, so that it runs before torch's own exit hooks.
    """

    _live: weakref.WeakSet[_BackgroundReader] = weakref.WeakSet()
    _hooked = False

    def __init__(self, produce: Any, ready: queue.Queue, free: queue.Queue) -> None:
        if not _BackgroundReader._hooked:
            atexit.register(_BackgroundReader.close_all)
            _BackgroundReader._hooked = True
        self.stop = threading.Event()
        self.thread = threading.Thread(target=produce, args=(ready, free, self.stop), name="packsft-loader",
                                       daemon=True)
        _BackgroundReader._live.add(self)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()  # the thread sees it within POLL_SECONDS, also when blocked on a full queue
        if self.thread is not threading.current_thread():
            self.thread.join()
        _BackgroundReader._live.discard(self)

    @staticmethod
    def close_all() -> None:
        for reader in list(_BackgroundReader._live):
            reader.close()

