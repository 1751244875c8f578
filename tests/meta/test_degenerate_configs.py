"""Configs at the edge of what the learned memory accepts, and meta-updates it has to skip.

- an ``eps`` so small that ``eps^2`` is no normal float32 (the dtype the memory runs in) made a
  coordinate that never saw a gradient 0/0 = NaN: refused by name;
- ``betas=()`` / ``time_scales=()`` step under ``sync_free`` as on the host (an unnamed
  ``torch.stack`` error there before);
- a skipped meta-update (non-finite meta-loss or meta-gradient) is recorded and warned about,
  not silent.
"""

from __future__ import annotations

import math

import pytest
import torch

from assocmem import MemoryOptimizer
from assocmem.meta import LearnedConfig, init_meta_params, save_checkpoint
from assocmem.meta import train as meta_train_module
from assocmem.meta.checkpoint import load_checkpoint
from assocmem.meta.features import features, init_memory, step_constants, write
from assocmem.meta.train import TrainConfig, meta_train

LEAST_EPS = 2.0**-63  # sqrt(torch.finfo(torch.float32).tiny): eps^2 is the least normal float32
SKIPPED = "meta-update was skipped"


# -- eps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-25, 1e-20, 1e-19])
def test_an_eps_whose_square_is_no_normal_float32_is_refused(eps):
    # 1e-25: eps^2 is 0 in float32; 1e-20 and 1e-19 (just under the bound): denormals
    assert torch.tensor(eps * eps, dtype=torch.float32) < torch.finfo(torch.float32).tiny
    with pytest.raises(ValueError, match="eps must be >="):
        LearnedConfig(eps=eps)


def test_the_least_eps_keeps_a_coordinate_without_gradients_finite():
    assert math.sqrt(torch.finfo(torch.float32).tiny) == LEAST_EPS
    config = LearnedConfig(eps=LEAST_EPS)
    param = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    grad = torch.zeros(4, 3)  # never a gradient: v_hat = 0, so sqrt(v_hat + eps^2) = eps
    memory = init_memory(param, config)
    for t in (1, 2, 3):
        memory = write(memory, grad, config)
        assert bool(features(memory, grad, param, t, config).isfinite().all()), t


def test_meta_training_that_cannot_move_says_so():
    # The audit's case: eps^2 underflowed to 0 (forced past the check here), every
    # meta-gradient was NaN and every meta-update skipped while the history looked normal.
    config = LearnedConfig(hidden=(8,))
    object.__setattr__(config, "eps", 1e-25)
    train = TrainConfig(meta_steps=2, unroll=2, horizon=4, tasks_per_step=1,
                        families=("digits_mlp",))  # fmt: skip
    with pytest.warns(RuntimeWarning, match=SKIPPED) as caught:
        result = meta_train(config, train, progress=False)
    assert sum(SKIPPED in str(w.message) for w in caught) == 1  # once, not per meta-step
    assert all(math.isfinite(h) for h in result.history)
    assert result.skipped == [0, 1]
    init = init_meta_params(config, torch.Generator().manual_seed(train.seed))
    assert all(torch.equal(init[k], v) for k, v in result.meta_params.items())


# -- skipped meta-updates -------------------------------------------------------------------

TINY = LearnedConfig(hidden=(8,))


def _small(**changes):
    base = {"meta_steps": 4, "unroll": 2, "horizon": 4, "tasks_per_step": 1,
            "families": ("quadratic",), "checkpoint_every": 2}  # fmt: skip
    return TrainConfig(**{**base, **changes})


@pytest.fixture
def nan_gradient_on_each_first_truncation(monkeypatch):
    """Every task's first truncation (meta-steps 0, 2, ... of ``_small``) gets a finite
    meta-loss and a NaN meta-gradient: ``sqrt(0 * phi)`` is 0 with the derivative ``inf * 0``."""
    real = meta_train_module.unroll

    def unroll(meta, *args, **kwargs):
        loss, params, memory, step = real(meta, *args, **kwargs)
        if step == 2:
            loss = loss + (0.0 * next(iter(meta.values())).sum()).sqrt()
        return loss, params, memory, step

    monkeypatch.setattr(meta_train_module, "unroll", unroll)


@pytest.mark.usefixtures("nan_gradient_on_each_first_truncation")
def test_a_skipped_meta_update_moves_nothing_and_is_recorded():
    with pytest.warns(RuntimeWarning, match=f"meta-step 0: .*{SKIPPED}"):
        one = meta_train(TINY, _small(meta_steps=1), progress=False)
    assert one.skipped == [0] and math.isfinite(one.history[0])
    init = init_meta_params(TINY, torch.Generator().manual_seed(0))
    assert all(torch.equal(init[k], v) for k, v in one.meta_params.items())
    with pytest.warns(RuntimeWarning, match=SKIPPED) as caught:
        full = meta_train(TINY, _small(), progress=False)
    assert sum(SKIPPED in str(w.message) for w in caught) == 1
    assert full.skipped == [0, 2]
    assert any(not torch.equal(init[k], v) for k, v in full.meta_params.items())


@pytest.mark.usefixtures("nan_gradient_on_each_first_truncation")
def test_skipped_meta_updates_survive_a_resume(tmp_path):
    with pytest.warns(RuntimeWarning, match=SKIPPED):
        full = meta_train(TINY, _small(), checkpoint=tmp_path / "a.safetensors", progress=False)
    with pytest.warns(RuntimeWarning, match="meta-step 0:"):
        meta_train(TINY, _small(meta_steps=2), checkpoint=tmp_path / "b.safetensors",
                   progress=False)  # fmt: skip
    assert load_checkpoint(tmp_path / "b.safetensors").info["skipped"] == [0]
    # the resumed call warns of its own first skip, and returns the run's whole record
    with pytest.warns(RuntimeWarning, match="meta-step 2:"):
        resumed = meta_train(TINY, _small(), checkpoint=tmp_path / "b.safetensors",
                             progress=False)  # fmt: skip
    assert resumed.skipped == full.skipped == [0, 2]
    assert resumed.history == full.history
    assert all(torch.equal(v, resumed.meta_params[k]) for k, v in full.meta_params.items())


@pytest.mark.parametrize("bad", ["0", [0.5], [True], [-1], [2], None])
def test_a_corrupt_record_of_skips_is_refused_on_resume(tmp_path, bad):
    path = tmp_path / "a.safetensors"
    meta_train(TINY, _small(meta_steps=2), checkpoint=path, progress=False)
    ckpt = load_checkpoint(path)
    save_checkpoint(path, ckpt.meta_params, TINY, info={**ckpt.info, "skipped": bad},
                    extra=ckpt.extra)  # fmt: skip
    with pytest.raises(ValueError, match="skipped must be a list of meta-steps < 2"):
        meta_train(TINY, _small(), checkpoint=path, progress=False)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda info: {**info, "meta_step": 0}, "meta_step 0 with 2 history entries"),
        (lambda info: {**info, "history": info["history"][:1]}, "meta_step 2 with 1 history"),
        (
            lambda info: {**info, "optim": {"param_groups": [
                {**info["optim"]["param_groups"][0], "lr": 100 * info["train"]["meta_lr"]}
            ]}},
            "group 0 lr: ",
        ),
        # read unchecked: a traceback from float() naming no file, or Nones summed by the CLI
        (lambda info: {**info, "history": ["a", 0.1]}, "history entries must be numbers"),
        (lambda info: {**info, "seconds": "abc"}, "seconds must be a finite number >= 0"),
        (lambda info: {**info, "seconds": -1.0}, "seconds must be a finite number >= 0"),
    ],
)  # fmt: skip
def test_an_edited_training_record_is_refused_on_resume(tmp_path, edit, match):
    # the header's meta_step, history and meta-optimizer settings drive a resume and no digest
    # covers them: a meta-Adam at 100x meta_lr, or a run resumed at the wrong step, resumed
    path = tmp_path / "a.safetensors"
    meta_train(TINY, _small(meta_steps=2), checkpoint=path, progress=False)
    ckpt = load_checkpoint(path)
    save_checkpoint(path, ckpt.meta_params, TINY, info=edit(ckpt.info), extra=ckpt.extra)
    with pytest.raises(ValueError, match=match):
        meta_train(TINY, _small(), checkpoint=path, progress=False)


def test_a_non_finite_meta_loss_in_the_history_survives_a_resume(tmp_path):
    """The header stores a non-finite number as null (strict JSON); a resume reads it back as
    NaN, not None (which the command's summary could not add up)."""
    path = tmp_path / "a.safetensors"
    meta_train(TINY, _small(meta_steps=2), checkpoint=path, progress=False)
    ckpt = load_checkpoint(path)
    info = {**ckpt.info, "history": [math.inf, ckpt.info["history"][1]]}
    save_checkpoint(path, ckpt.meta_params, TINY, info=info, extra=ckpt.extra)
    assert load_checkpoint(path).info["history"][0] is None
    resumed = meta_train(TINY, _small(), checkpoint=path, progress=False)
    assert math.isnan(resumed.history[0]) and resumed.history[1] == ckpt.info["history"][1]
    assert all(isinstance(h, float) for h in resumed.history)


# -- empty betas / time_scales --------------------------------------------------------------

EMPTY = {
    "no momenta": {"betas": (), "init_skip": 0},
    "no time features": {"time_scales": ()},
    "neither": {"betas": (), "time_scales": (), "init_skip": 0},
}


@pytest.mark.parametrize("changes", EMPTY.values(), ids=EMPTY.keys())
def test_empty_tuples_give_empty_constants_on_the_host_and_the_device(changes):
    config = LearnedConfig(hidden=(4,), **changes)
    like = torch.zeros(3)
    for t in (1, 2, 100):
        host = step_constants(t, config, like)
        device = step_constants(torch.tensor(float(t)), config, like)
        for h, d, n in zip(host, device, (len(config.betas), len(config.time_scales)),
                           strict=True):  # fmt: skip
            assert h.shape == d.shape == (n,) and h.dtype == d.dtype == torch.float32
            assert torch.equal(h, d)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("changes", EMPTY.values(), ids=EMPTY.keys())
def test_empty_tuples_step_under_sync_free_as_on_the_host(tmp_path, changes, foreach):
    # The host path defines what an empty tuple means (no momenta / no time features);
    # sync_free raised torch's unnamed "stack expects a non-empty TensorList" after the step
    # count had moved. Now both give the same bits, counts included.
    config = LearnedConfig(hidden=(4,), **changes)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, init_meta_params(config, torch.Generator().manual_seed(1)), config)

    def run(sync_free: bool) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4, 3, generator=g)),
                  torch.nn.Parameter(torch.randn(3, generator=g))]  # fmt: skip
        opt = MemoryOptimizer(params, memory="learned", checkpoint=path, sync_free=sync_free,
                              foreach=foreach)  # fmt: skip
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        return params, [dict(opt.state[p]) for p in params]

    host_params, host_states = run(sync_free=False)
    free_params, free_states = run(sync_free=True)
    for p, q in zip(host_params, free_params, strict=True):
        assert torch.equal(p, q)
    for a, b in zip(host_states, free_states, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k].float(), b[k].float()), k
    assert all(float(s["step"]) == 3.0 for s in free_states)
    assert all(int(s["nonfinite_updates"]) == 0 for s in free_states)
