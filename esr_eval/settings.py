"""Plain settings shared by the driver and its actors: timing protocols and the evaluation config.

Contract
--------
* Only the standard library: no torch, numpy or Ray. Objects defined here cross process
  boundaries (the driver pickles an :class:`EvaluationConfig` into every actor call), so a
  process can receive them without importing torch.
* The definitions live here; ``esr_eval.timing`` (``TimingProtocol``, ``OFFICIAL``,
  ``DEFAULT``, ``PROTOCOLS``, ``get_protocol``), ``esr_eval.evaluate`` (``EvaluationConfig``)
  and ``esr_eval.complexity`` (``DEFAULT_INPUT_SHAPE``) import them back, so the old import
  paths keep working. What each protocol means is documented in ``esr_eval.timing``.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_INPUT_SHAPE = (1, 3, 256, 256)  # the official complexity input, 1×3×256×256
DEFAULT_MEMORY_LIMIT_MB = 16384  # host memory a submission's process may use (RLIMIT_DATA)


@dataclass(frozen=True)
class TimingProtocol:
    name: str
    version: int
    warmup_passes: int
    repeats: int
    headline: str  # "mean" (official) or "mean_of_image_medians"
    description: str
    shuffled: bool = False  # each pass in a fresh random order (else file order)

    @property
    def protocol_id(self) -> str:
        return f"{self.name}-v{self.version}"


OFFICIAL = TimingProtocol(
    "official", 1, warmup_passes=0, repeats=1, headline="mean",
    description="as the organisers' script: no warm-up, one timed call per image, mean, cold first image included")
DEFAULT = TimingProtocol(
    "esr-default", 2, warmup_passes=1, repeats=5, headline="mean_of_image_medians",
    description="one untimed pass over the split, then 5 timed passes, each pass in a fresh random order; "
                "split runtime = mean of per-image medians", shuffled=True)
PROTOCOLS = {p.protocol_id: p for p in (OFFICIAL, DEFAULT)}
PROTOCOLS.update({p.name: p for p in (OFFICIAL, DEFAULT)})


def get_protocol(name: str, repeats: int | None = None, warmup_passes: int | None = None) -> TimingProtocol:
    """A protocol by name or id; overriding repeats/warm-up gives a ``custom`` variant, recorded as such."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown timing protocol {name!r}. Fix: pass --timing with one of {', '.join(sorted(PROTOCOLS))}")
    base = PROTOCOLS[name]
    if repeats is None and warmup_passes is None:
        return base
    repeats = base.repeats if repeats is None else repeats
    warmup = base.warmup_passes if warmup_passes is None else warmup_passes
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warm-up passes >= 0")
    return TimingProtocol(f"{base.name}-w{warmup}r{repeats}", base.version, warmup, repeats, base.headline,
                          f"{base.description} (overridden: {warmup} warm-up passes, {repeats} repeats)",
                          base.shuffled)


@dataclass(frozen=True)
class EvaluationConfig:
    protocol: TimingProtocol = DEFAULT
    device: str = "cpu"
    torch_threads: int | None = None
    complexity_input_shape: tuple[int, ...] = DEFAULT_INPUT_SHAPE
    hygiene: bool = True
    ssim: bool = False
    memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT_MB  # host memory per submission (RLIMIT_DATA); None: no limit
    landlock: bool = True  # the sandbox restricts itself with Landlock where the kernel has it
