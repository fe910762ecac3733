"""Sound timing: warm-up, device-synchronised clocks, alternated repetitions, median and spread.

On CUDA a region is timed with CUDA events recorded on the current stream and read after one
synchronisation, so queued work is counted and host jitter is not; elsewhere with ``perf_counter``
around work that has finished when the call returns. Systems are run in ABBA order (the order reverses
every repetition) so slow drift of clocks and temperature affects every system alike.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from collections.abc import Callable, Iterator, Mapping

import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)
Durations = dict[str, float]  # named regions of one run -> seconds


@dataclass(frozen=True)
class Stats:
    """Summary of repeated measurements, in seconds."""

    median: float
    mean: float
    min: float
    max: float
    stdev: float
    iqr: float  # interquartile range: the spread that ignores one stray repetition
    n: int

    @classmethod
    def of(cls, samples: list[float]) -> Stats:
        if not samples:
            raise ValueError("no samples to summarise")
        s = sorted(samples)
        q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
        return cls(
            median=statistics.median(s),
            mean=statistics.fmean(s),
            min=s[0],
            max=s[-1],
            stdev=statistics.stdev(s) if len(s) > 1 else 0.0,
            iqr=q[2] - q[0],
            n=len(s),
        )

    def to_dict(self) -> dict:
        return asdict(self)


class Clock:
    """Times regions on one device; ``durations`` collects them by name for one run."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.durations: Durations = {}
        self._pending: list[tuple[str, object, object]] = []

    @contextmanager
    def region(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._pending.append((name, start, end))
            return
        t0 = time.perf_counter()
        yield
        self.durations[name] = self.durations.get(name, 0.0) + time.perf_counter() - t0

    def collect(self) -> Durations:
        """Synchronise once and return every region of the run."""
        if self._pending:
            torch.cuda.synchronize(self.device)
            for name, start, end in self._pending:
                self.durations[name] = self.durations.get(name, 0.0) + start.elapsed_time(end) / 1e3
            self._pending.clear()
        out, self.durations = self.durations, {}
        return out


def synchronize(device: torch.device | str) -> None:
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(
    runs: Mapping[str, Callable[[], Durations]],
    repeats: int,
    warmup: int = 1,
    progress: bool = True,
    desc: str = "timing",
) -> dict[str, dict[str, list[float]]]:
    """Run every system ``warmup`` times, then ``repeats`` times in ABBA order.

    Each callable returns the durations of its named regions for one run; the result maps
    system -> region -> one sample per repetition.
    """
    names = list(runs)
    total = len(names) * (warmup + repeats)
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for _ in range(warmup):
            for name in names:
                runs[name]()
                bar.update()
        for r in range(repeats):
            for name in names if r % 2 == 0 else reversed(names):
                for region, seconds in runs[name]().items():
                    samples[name].setdefault(region, []).append(seconds)
                bar.update()
    return samples


def summarise(samples: Mapping[str, Mapping[str, list[float]]]) -> dict[str, dict[str, dict]]:
    return {
        system: {region: Stats.of(values).to_dict() for region, values in regions.items()}
        for system, regions in samples.items()
    }


def per_step(long: list[float], short: list[float], steps: int) -> list[float]:
    """Per-step seconds of each repetition from runs of different lengths: fixed costs cancel."""
    if steps <= 0:
        raise ValueError("the long run must have more steps than the short one")
    return [(a - b) / steps for a, b in zip(long, short, strict=True)]


def fmt_ms(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "n/a"
    return f"{seconds * 1e3:.2f}"
