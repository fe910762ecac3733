"""Static buffer arena, the one-copy host pack, result fetch, memory sizes and the meta activation tracer."""

import pytest
import torch

from ifengine.runtime.buffers import ALIGN, BufferArena, HostPack, fetch_no_sync
from ifengine.memory.meta_trace import peak_activation_bytes
from ifengine.memory.sizes import SizeError, format_size, parse_size


def test_arena_allocates_once_and_views_smaller_shapes_in_place():
    arena = BufferArena("cpu")
    big = arena.view("x", (2, 3, 8, 8), torch.float16)
    ptr, generation = big.data_ptr(), arena.generation
    small = arena.view("x", (1, 3, 4, 4), torch.float16)
    other_dtype = arena.view("x", (2, 3, 8, 8), torch.float32)  # 2x the bytes: grows
    assert small.data_ptr() == ptr and small.is_contiguous() and small.shape == (1, 3, 4, 4)
    assert other_dtype.data_ptr() != ptr and arena.generation == generation + 1
    assert arena.view("x", (1, 3, 8, 8), torch.float16).data_ptr() == other_dtype.data_ptr()


def test_arena_reserve_up_front_means_no_growth_later():
    arena = BufferArena("cpu")
    arena.reserve("x", 4 * 3 * 64 * 64 * 2)
    generation = arena.generation
    for batch in (1, 2, 4):
        arena.view("x", (batch, 3, 64, 64), torch.float16)
    assert arena.generation == generation


def pack_of(*tensors):
    pack = HostPack()
    for i, t in enumerate(tensors):
        pack.add(f"t{i}", t)
    return pack


def test_pack_layout_is_aligned_and_depends_only_on_shapes():
    a = pack_of(torch.randn(3), torch.zeros(5, dtype=torch.long), torch.ones(2, dtype=torch.bool))
    b = pack_of(torch.randn(3), torch.ones(5, dtype=torch.long), torch.zeros(2, dtype=torch.bool))
    assert a.layout() == b.layout()
    entries, total = a.layout()
    assert all(e.offset % ALIGN == 0 for e in entries) and total % ALIGN == 0


def test_pack_uploads_every_dtype_exactly_with_one_copy():
    values = [
        torch.randn(2, 3, dtype=torch.float16),
        torch.arange(4),
        torch.tensor([True, False]),
        torch.tensor(7.5),
        torch.randn(3, dtype=torch.float64),
    ]
    pack = pack_of(*values)
    dest = torch.zeros(pack.layout()[1], dtype=torch.uint8)
    views = pack.upload_no_sync(dest)
    for i, v in enumerate(values):
        assert views[f"t{i}"].dtype == v.dtype and torch.equal(views[f"t{i}"], v)
        assert views[f"t{i}"].untyped_storage().data_ptr() == dest.untyped_storage().data_ptr()


def test_pack_refuses_a_too_small_buffer_and_duplicate_names():
    pack = pack_of(torch.randn(100))
    with pytest.raises(ValueError, match="upload buffer holds"):
        pack.upload_no_sync(torch.zeros(16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="already holds"):
        pack.add("t0", torch.zeros(1))


def test_fetch_returns_float32_results_and_finite_flags():
    good, bad = torch.randn(1, 3, 4, 4, dtype=torch.float16), torch.tensor([1.0, float("nan")])
    host, finite = fetch_no_sync([good, bad]).wait()
    assert host[0].dtype == torch.float32 and torch.equal(host[0], good.float())
    assert finite == [True, False]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8GiB", 8 * 2**30),
        ("12GB", 12 * 10**9),
        ("8000MiB", 8000 * 2**20),
        ("1.5 GiB", 3 * 2**29),
        ("512mib", 512 * 2**20),
        ("1024", 1024),
        (2**30, 2**30),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("8G", "unknown size unit 'G'"),
        ("eight GiB", "cannot read"),
        ("0GiB", "more than 0"),
        ("", "cannot read"),
        ("-1GiB", "cannot read"),
    ],
)
def test_parse_size_errors_say_what_is_accepted(text, message):
    with pytest.raises(SizeError, match=message):
        parse_size(text)


def test_format_size():
    assert format_size(8 * 2**30) == "8.00 GiB" and format_size(512 * 2**20) == "512.00 MiB"
    assert format_size(100) == "100 B"


def test_meta_tracer_counts_live_intermediates_not_inputs():
    x = torch.empty(1024, device="meta", dtype=torch.float32)  # 4 KiB

    def chain():
        a = x * 2  # 4 KiB live
        b = a + 1  # 8 KiB live
        del a
        c = b.view(32, 32).t()  # a view: no new memory
        return c * 3  # 8 KiB live again

    assert peak_activation_bytes(chain, [x]) == 8192


def test_meta_tracer_models_fused_attention():
    q = torch.empty(1, 8, 4096, 64, device="meta", dtype=torch.float16)
    run = lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)  # noqa: E731
    assert peak_activation_bytes(run, [q]) == q.numel() * 2  # no 4096 x 4096 score matrix
