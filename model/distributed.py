"""Synchronous data-parallel training over MPI (mpi4py), as Horovod and Chainer's multi-node
extension do it:

    mpiexec -n 2 python -m model.train --distributed ...

Every rank builds the same network from the same seed and draws the same shuffled global batches
(and augmentation, and dropout masks for the whole batch) from the same generator; each takes
its contiguous slice of every global batch (`shard`). After backward, one in-place `Allreduce`
sums a single flat buffer holding every parameter's gradient, scaled by the rank's share of the
batch, plus the batch's loss, its correct count and a failure flag, so that every rank applies
the same update: the global batch's mean gradient, exactly as one process would (to float32
reduction order). Batch norm is synchronised: each BatchNorm layer's `reduce` sums its per-channel
statistics (two small Allreduces forward, two backward), so every rank normalises by the whole
batch's mean and variance, and the running statistics stay identical everywhere. Results then do
not depend on the number of ranks, only --batch-size does.

Rank 0 alone prints, draws and writes checkpoints (model.train); a failure on any rank ends the
whole job (see `Communicator.abort`). Ctrl-C is agreed like a failure: while training, SIGINT
only sets a flag (`Communicator.interrupts_at_a_step`), the step's Allreduce carries it, and
every rank raises KeyboardInterrupt after the same step, so rank 0 saves and all ranks exit
together; a KeyboardInterrupt raised wherever the signal happened to land on one rank would
leave the others waiting in an Allreduce it never joins.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import numpy as np

from .losses import NonFiniteLoss

INSTALL_HINT = 'pip install -e ".[mpi]"'


class RankFailed(RuntimeError):
    """Raised on every rank when a step failed on some (their errors are on their stderr)."""

    def __init__(self, count: int):
        super().__init__(
            f"{count} rank{'s' if count > 1 else ''} failed in a training step (the error is "
            "printed above by the rank that had it)"
        )
        self.count = count


def test_failure(rank: int, step: int) -> None:
    """Test hook for tests/test_model_distributed.py: CONVBENCH_FAIL_AT="RANK:STEP" makes that
    rank's step fail at that (0-based) optimizer step, as bad data or a bug would."""
    target = os.environ.get("CONVBENCH_FAIL_AT")
    if target and target == f"{rank}:{step}":
        raise RuntimeError(f"CONVBENCH_FAIL_AT={target}: a deliberate failure")


def connect():
    """The communicator of this MPI job (COMM_WORLD); a clear error naming the extra to
    install when mpi4py is missing."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError(
            f"--distributed needs mpi4py and an MPI library: {INSTALL_HINT}"
        ) from None
    return Communicator(MPI.COMM_WORLD, MPI)


class Communicator:
    """One rank's view of the job: rank, size, and the collectives data-parallel training
    needs. `flat` is the step buffer, allocated once at the first step."""

    def __init__(self, comm, mpi):
        self.comm, self._mpi = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.flat: np.ndarray | None = None
        self.interrupted = False  # SIGINT seen here, not yet agreed (interrupts_at_a_step)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous [lo, hi) of a global batch of n samples (sizes differ by at
        most one when n is not a multiple of the ranks)."""
        bounds = np.linspace(0, n, self.size + 1).astype(int)
        return int(bounds[self.rank]), int(bounds[self.rank + 1])

    def sum(self, array: np.ndarray) -> np.ndarray:
        """The element-wise sum of `array` over all ranks (a new float64 array)."""
        local = np.ascontiguousarray(array, dtype=np.float64)
        total = np.empty_like(local)
        self.comm.Allreduce(local, total, op=self._mpi.SUM)
        return total

    def attach(self, net) -> None:
        """Make the network's batch norms synchronous and start every rank from rank 0's
        weights (they agree already when built from the same seed; a safety net)."""
        for layer in net.layers:
            if hasattr(layer, "reduce"):
                layer.reduce = self.sum
        for _, layer, name in net.parameters():
            self.comm.Bcast(layer.params[name], root=0)
        for layer in net.layers:
            for array in layer.buffers.values():
                self.comm.Bcast(array, root=0)

    @contextlib.contextmanager
    def interrupts_at_a_step(self):
        """Within: SIGINT sets self.interrupted instead of raising KeyboardInterrupt, and
        reduce_step raises KeyboardInterrupt on every rank at the first step whose Allreduce
        carries a rank's flag. Outside (loading data, compiling), Ctrl-C raises as usual and
        model.train ends the job with Communicator.abort."""

        def note(signum, frame):
            self.interrupted = True

        previous = signal.signal(signal.SIGINT, note)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def reduce_step(
        self, net, loss_sum: float, correct: int, nonfinite: bool = False, error: bool = False
    ) -> tuple[float, int]:
        """Sum the gradients (each already this rank's share of the global mean) in place in
        one Allreduce of one flat buffer, with the batch's loss sum, correct count, a
        non-finite-loss count, a failed-rank count and an interrupted-rank count. Returns the
        global (loss sum, correct); on every rank, before any weight changes, RankFailed when
        a rank's step raised (`error`), else KeyboardInterrupt when a rank saw SIGINT (see
        interrupts_at_a_step), else NonFiniteLoss when a rank's loss was NaN or infinite."""
        grads = [] if error else [layer.grads[name] for _, layer, name in net.parameters()]
        size = sum(layer.params[name].size for _, layer, name in net.parameters())
        if self.flat is None or self.flat.size != size + 5:
            self.flat = np.empty(size + 5, dtype=net.dtype)
        flat = self.flat
        flat[:] = 0
        at = 0
        for g in grads:
            flat[at : at + g.size] = g.ravel()
            at += g.size
        ok = not (error or nonfinite)
        flat[-5:] = (
            loss_sum if ok else 0.0,
            correct if ok else 0,
            nonfinite,
            float(error),
            float(self.interrupted),
        )
        self.comm.Allreduce(self._mpi.IN_PLACE, flat, op=self._mpi.SUM)
        if flat[-2] > 0:
            raise RankFailed(int(flat[-2]))
        if flat[-1] > 0:
            self.interrupted = False
            raise KeyboardInterrupt
        if flat[-3] > 0:
            raise NonFiniteLoss(float("nan"))
        at = 0
        for _, layer, name in net.parameters():
            # views into the step buffer: the update reads them now, and the next backward
            # replaces them before the buffer is filled again
            g = layer.grads[name]
            layer.grads[name] = flat[at : at + g.size].reshape(g.shape)
            at += g.size
        return float(flat[-5]), int(round(float(flat[-4])))

    def test_failure(self, step: int) -> None:
        test_failure(self.rank, step)

    def report(self, exc: BaseException) -> None:
        """Print this rank's error (the job's other ranks stop with RankFailed)."""
        print(
            f"rank {self.rank}/{self.size}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
            flush=True,
        )

    def abort(self, message: str, code: int = 1) -> None:
        """End the whole job: a rank that fails outside the step's collectives would otherwise
        leave the others waiting in their next Allreduce for ever."""
        print(
            f"rank {self.rank}/{self.size}: {message}; ending the job", file=sys.stderr, flush=True
        )
        self.comm.Abort(code)
