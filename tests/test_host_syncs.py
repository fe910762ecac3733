"""A generate call reads nothing back from the device before its one final fetch.

On the CPU every tensor is a host tensor, so a read-back costs nothing here; what this checks is the
code path: each op that would read a device tensor back on a GPU (``.item()``, ``bool(t)``, a
data-dependent shape) is recorded with where it came from. The only reads allowed are those of the
host-side T5 mask preparation, which works on the tokenizer's host tensors by design.
"""

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ifengine
from ifengine.runtime.capture_audit import HOST_SYNC_OPS
from ifengine.text.masks import host_attention_mask

KW = dict(steps=(2, 2, 2), height=8, width=8, output_type="pt", progress=False)


class ReadBacks(TorchDispatchMode):
    """Records every host read-back op, with the ifengine frames that led to it."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name.startswith(HOST_SYNC_OPS) or (name.startswith("aten.index.Tensor") and _bool_index(args)):
            frames = [f.name for f in traceback.extract_stack() if "/ifengine/" in f.filename]
            if "host_attention_mask" not in frames:
                self.reads.append((name, " <- ".join(frames[-4:])))
        return func(*args, **(kwargs or {}))


def _bool_index(args) -> bool:
    """t[mask] dispatches as aten.index.Tensor; on a GPU its data-dependent shape needs a nonzero (a sync)."""
    return any(getattr(i, "dtype", None) == torch.bool for i in (args[1] if len(args) > 1 else ()))


# The common ways of reading a device tensor back (each makes a GPU host sync), written out here rather
# than taken from ifengine's own op list, so an incomplete list fails this test instead of seeing nothing.
# (.tolist(), .numpy() and .cpu() of a CPU tensor dispatch no op at all: this CPU test cannot see them.)
_T = torch.linspace(-1, 1, 8)
READ_BACKS = {
    "item": lambda: _T.sum().item(),
    "bool": lambda: bool(_T.sum() > 0),
    "float": lambda: float(_T.max()),
    "int": lambda: int(_T.argmax()),
    "if any": lambda: 1 if (_T > 0).any() else 0,
    "nonzero": lambda: _T.nonzero(),
    "mask index": lambda: _T[_T > 0],
    "masked_select": lambda: _T.masked_select(_T > 0),
    "unique": lambda: _T.unique(),
    "equal": lambda: torch.equal(_T, _T),
    "repeat_interleave": lambda: torch.repeat_interleave(torch.arange(3)),
}


@pytest.mark.parametrize("idiom", list(READ_BACKS))
def test_the_audit_sees_every_read_back(idiom):
    audit = ReadBacks()
    with audit:
        READ_BACKS[idiom]()
    assert audit.reads, f"{idiom} read a tensor back unseen"


@pytest.fixture(scope="module")
def cascades(stage1_dir, stage2_dir, stage3_dir):
    plain = ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, stage3_dir, safety=False)
    lean = ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, stage3_dir, safety=False).use_runtime(
        cuda_graphs=False
    )
    return {"plain": plain, "runtime": lean}


@pytest.mark.parametrize("which", ["plain", "runtime"])
def test_a_call_with_new_prompts_reads_nothing_back_until_the_final_fetch(cascades, which):
    cascade = cascades[which]
    cascade("a warm-up prompt", seed=0, **KW)  # first-call set-up (tracing, buffers) is not the question
    for encoder in cascade.encoders():
        encoder.clear_cache()  # every text encoder runs again
    audit = ReadBacks()
    with torch.no_grad(), audit:
        out = cascade("a red cat", negative_prompt="blurry", seed=1, **KW)
    assert audit.reads == []
    assert len(out.stages) == 3 and all(torch.isfinite(s).all() for s in out.stages)


def test_the_host_prepared_t5_mask_gives_the_same_embeddings(cascades):
    encoder = cascades["plain"].text
    tokens = ifengine.text.encoder.tokenize(encoder.tokenizer, ["a red cat", ""], 77)
    prepared = host_attention_mask(encoder.model, tokens.mask)
    assert prepared is not None and prepared.dim() == 4  # prepared, not the 2-D mask handed through
    with torch.no_grad():
        ours = encoder.model(tokens.ids, attention_mask=prepared)[0]
        theirs = encoder.model(tokens.ids, attention_mask=tokens.mask)[0]
    assert torch.equal(ours, theirs)


def test_a_non_finite_text_encoding_is_reported_and_not_cached(stage1_dir):
    cascade = ifengine.Cascade.from_pretrained(stage1_dir, safety=False)
    encoder = cascade.text
    with torch.no_grad():
        encoder.model.shared.weight[:] = float("nan")  # every token embeds to NaN
    with pytest.raises(FloatingPointError, match="text encoder produced non-finite values"):
        cascade("a red cat", seed=0, steps=2, output_type="pt", progress=False)
    assert "a red cat" not in encoder._cache and "" not in encoder._cache
    assert encoder.take_checks() == []  # consumed by the failed call, nothing left over
