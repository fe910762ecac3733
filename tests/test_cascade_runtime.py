"""The cascade through the lean runtime (static buffers, one upload per stage) equals the plain loops."""

import torch

import ifengine


def test_runtime_path_equals_plain_loops(stage1_dir, stage2_dir, stage3_dir):
    """A self-comparison on purpose: the runtime must reproduce the plain loops (themselves checked against
    diffusers in test_cascade.py / test_edit.py) bit for bit."""
    plain = ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, stage3_dir)
    lean = ifengine.Cascade.from_pretrained(stage1_dir, stage2_dir, stage3_dir).use_runtime(cuda_graphs=False)
    assert plain.runtime is None and lean.runtime is not None
    kw = dict(steps=(4, 3, 2), seed=2, output_type="pt", progress=False)
    a, b = plain("a red cat", **kw), lean("a red cat", **kw)
    for x, y in zip(a.stages, b.stages, strict=True):
        assert torch.equal(x, y)
    mask = torch.zeros(1, 16, 16)
    mask[:, :8] = 1
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    ea = plain.inpaint(image, mask, "a door", **kw)
    eb = lean.inpaint(image, mask, "a door", **kw)
    # img2img is bit-exact too; the inpainting blend differs by one ulp on the first step (element-wise
    # kernels round their vector body and scalar tail differently, and the runtime's inputs are views
    # at other offsets of one upload buffer), which a few U-Net steps amplify to ~2e-5
    for x, y in zip(ea.stages, eb.stages, strict=True):
        assert (x - y).abs().max().item() <= 1e-4
