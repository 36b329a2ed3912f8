"""Every voting method (`hough_vote(method=...)`) against the float64 reference, and the native CPU kernel's
corners: crops and row bands over threads (pinned thread counts), rows whose vote count is not a multiple of its
vector width, one-pixel maps, non-finite offsets, vmap, gradients, devices, and the fallback where it cannot be
built."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import skip_or_fail
from hvpose.ops import native, voting
from hvpose.ops.voting import METHODS, hough_vote, hough_vote_numpy

EXPLICIT = [m for m in METHODS if m != "auto"]


@pytest.fixture(scope="module")
def native_available():
    if native.ffi_target(voting.NATIVE_TARGET) is None:
        skip_or_fail("the native voting kernel could not be built here (no C++ compiler?)")


def inputs(rng, shape, spread):
    heatmaps = rng.random(shape, dtype=np.float32)
    offsets = (rng.standard_normal((*shape, 2)) * spread).astype(np.float32)
    return heatmaps, offsets


@pytest.mark.parametrize("method", EXPLICIT)
@pytest.mark.parametrize("shape, spread", [
    ((1, 9, 7, 3), 3.0),    # one crop: row bands over threads; 21 votes a row (not a multiple of 4)
    ((3, 6, 11, 2), 8.0),   # more crops than threads, most votes off the map
    ((2, 5, 5, 1), 0.6),    # one keypoint: nothing to split
    ((2, 33, 17, 17), 5.0),
])
def test_every_method_matches_the_float64_reference(rng, native_available, method, shape, spread):
    heatmaps, offsets = inputs(rng, shape, spread)
    offsets[0, 0, 0, 0] = (-1.0, -1.0)  # floor corner exactly at (-1, -1): only its far corner lands
    offsets[-1, -1, -1, -1] = (0.999, 0.999)  # lands just inside the bottom-right pixel
    want = hough_vote_numpy(heatmaps, offsets, 2.5)
    got = np.asarray(hough_vote(heatmaps, offsets, 2.5, method=method))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_native_drops_non_finite_and_far_votes_like_the_scatter(rng, native_available):
    heatmaps, offsets = inputs(rng, (2, 8, 9, 5), 2.0)
    offsets[0, 1, 2, 3] = (np.nan, 0.0)
    offsets[0, 2, 2, 3] = (0.0, np.nan)
    offsets[0, 3, 3, 1] = (np.inf, 0.0)
    offsets[1, 4, 4, 0] = (0.0, -np.inf)
    offsets[1, 5, 5, 1] = (3e9, 1.0)  # beyond int32 if it were converted
    offsets[1, 6, 6, 2] = (-3e9, -3e9)
    got = np.asarray(hough_vote(heatmaps, offsets, 2.0, method="native"))
    want = np.asarray(hough_vote(heatmaps, offsets, 2.0, method="scatter"))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got, hough_vote_numpy(heatmaps, offsets, 2.0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("threads", ["1", "3", "64"])
def test_native_with_pinned_thread_counts_on_small_and_odd_maps(native_available, threads):
    """Whether crops or row bands go to threads depends on the thread count, read when a call is traced: pinned
    here (1, 3, and more than any map's rows), on maps of one row, one column, and fewer than 4 votes a row."""
    run_python("""
        import numpy as np
        from hvpose.ops.voting import hough_vote, hough_vote_numpy
        rng = np.random.default_rng(0)
        for shape in [(1, 1, 1, 1), (2, 3, 1, 2), (3, 1, 5, 2), (1, 6, 5, 3), (4, 9, 7, 3), (5, 2, 2, 17)]:
            h = rng.random(shape, dtype=np.float32)
            o = rng.normal(0, 1.5, (*shape, 2)).astype(np.float32)
            np.testing.assert_allclose(hough_vote(h, o, 1.5, method="native"), hough_vote_numpy(h, o, 1.5),
                                       rtol=1e-5, atol=1e-7, err_msg=str(shape))
        print("ok")
    """, HVPOSE_NATIVE_THREADS=threads)


def test_auto_is_native_on_cpu(rng, native_available):
    heatmaps, offsets = inputs(rng, (1, 6, 5, 2), 1.0)
    text = jax.jit(lambda h, o: hough_vote(h, o, 2.0)).lower(heatmaps, offsets).as_text()
    assert voting.NATIVE_TARGET in text


def test_native_under_vmap_and_radius_per_call(rng, native_available):
    heatmaps, offsets = inputs(rng, (2, 3, 7, 6, 4), 2.0)  # a vmapped axis of 2 over batches of 3
    radii = jnp.asarray([2.0, 3.0])
    got = jax.vmap(lambda h, o, r: hough_vote(h, o, r, method="native"))(heatmaps, offsets, radii)
    for i in range(2):
        np.testing.assert_allclose(got[i], hough_vote_numpy(heatmaps[i], offsets[i], float(radii[i])),
                                   rtol=1e-5, atol=1e-7)


def test_native_gradient_is_the_scatters(rng, native_available):
    heatmaps, offsets = inputs(rng, (1, 6, 5, 2), 1.5)
    weights = jnp.asarray(rng.random((1, 6, 5, 2), dtype=np.float32))

    def loss(method):
        return lambda h, o: jnp.sum(hough_vote(h, o, 2.0, method=method) * weights)

    for got, want in zip(jax.grad(loss("native"), argnums=(0, 1))(heatmaps, offsets),
                         jax.grad(loss("scatter"), argnums=(0, 1))(heatmaps, offsets), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        assert np.abs(np.asarray(want)).max() > 0


def test_unknown_method_and_a_radius_per_keypoint_are_refused(rng):
    heatmaps, offsets = inputs(rng, (1, 4, 4, 1), 1.0)
    with pytest.raises(ValueError, match="not one of"):
        hough_vote(heatmaps, offsets, 1.0, method="fast")
    with pytest.raises(ValueError, match="scalar"):  # the methods would broadcast it differently
        hough_vote(heatmaps, offsets, np.ones(1, np.float32))


def test_a_failing_compiler_raises_with_its_output(tmp_path, monkeypatch):
    monkeypatch.setenv("HVPOSE_CACHE_DIR", str(tmp_path))
    source = tmp_path / "broken.cc"
    source.write_text("this is not C++\n")
    compiler = native.find_compiler()
    if compiler is None:
        skip_or_fail("no C++ compiler on PATH")
    with pytest.raises(RuntimeError, match="failed"):
        native.compile_library(source, compiler)
    assert not list((tmp_path / "native").glob("*.so*"))  # no partial library left behind


def run_python(script, **env):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, **env})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_disabled_native_falls_back_to_the_scatter_and_says_why():
    run_python("""
        import numpy as np, pytest
        from hvpose.ops.voting import hough_vote, hough_vote_numpy
        rng = np.random.default_rng(0)
        h, o = rng.random((1, 5, 6, 2), dtype=np.float32), rng.normal(0, 2, (1, 5, 6, 2, 2)).astype(np.float32)
        np.testing.assert_allclose(hough_vote(h, o, 2.0), hough_vote_numpy(h, o, 2.0), rtol=1e-5, atol=1e-7)
        with pytest.raises(RuntimeError, match="HVPOSE_NATIVE=0"):
            hough_vote(h, o, 2.0, method="native")
        print("ok")
    """, HVPOSE_NATIVE="0")


def test_native_in_shard_map_on_eight_devices_votes_each_devices_crops(native_available):
    run_python("""
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from hvpose.ops.voting import hough_vote, hough_vote_numpy
        assert jax.device_count() == 8
        mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        rng = np.random.default_rng(0)
        h, o = rng.random((16, 9, 7, 3), dtype=np.float32), rng.normal(0, 3, (16, 9, 7, 3, 2)).astype(np.float32)
        batch = NamedSharding(mesh, P("data"))
        # As `hvpose.inference.network_fn` decodes: each device votes its own crops.
        local = jax.shard_map(lambda h, o: hough_vote(h, o, 2.0), mesh=mesh, in_specs=(P("data"), P("data")),
                              out_specs=P("data"), check_vma=False)
        vote = jax.jit(local, in_shardings=(batch, batch), out_shardings=batch)
        hlo = vote.lower(h, o).compile().as_text()
        assert "all-gather" not in hlo, "the native call should run on each device's own crops"
        got = vote(jax.device_put(h, batch), jax.device_put(o, batch))
        np.testing.assert_allclose(got, hough_vote_numpy(h, o, 2.0), rtol=1e-5, atol=1e-7)
        print("ok")
    """, XLA_FLAGS="--xla_force_host_platform_device_count=8")


def test_sparse_voting_is_exact_voting_of_the_top_pixels(rng):
    """top_n = every pixel gives the dense maps; fewer gives the dense maps of heatmaps zeroed outside each map's
    top_n pixels (probabilities distinct, so the top set is unambiguous)."""
    shape = (2, 7, 6, 3)
    heatmaps = rng.permutation(np.arange(np.prod(shape), dtype=np.float32) + 1).reshape(shape) / np.prod(shape)
    offsets = rng.normal(0, 2.0, (*shape, 2)).astype(np.float32)
    np.testing.assert_allclose(voting.hough_vote_sparse(heatmaps, offsets, 2.0, top_n=42),
                               hough_vote_numpy(heatmaps, offsets, 2.0), rtol=1e-5, atol=1e-7)
    top_n = 5
    flat = heatmaps.reshape(2, 42, 3)
    threshold = np.sort(flat, axis=1)[:, -top_n][:, None, :]
    masked = np.where(flat >= threshold, flat, 0.0).reshape(shape)
    np.testing.assert_allclose(voting.hough_vote_sparse(heatmaps, offsets, 2.0, top_n=top_n),
                               hough_vote_numpy(masked, offsets, 2.0), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="top_n"):
        voting.hough_vote_sparse(heatmaps, offsets, 2.0, top_n=43)
