"""``experiments.ship_detector`` end to end on the tiny benchmark: a loadable checkpoint whose
header carries the run, and the results section rebuilt from the file alone."""

from __future__ import annotations

import shlex

import pytest

from assocmem.forensic import Detector
from assocmem.forensic.checkpoint import DEFAULT_CHECKPOINT, load_detector
from experiments.ship_detector import SHIPPED_RECIPE, build_parser, main

# a small image calibration: 20 crops of 4 tiles, the fewest that resolve a 5 % rate
SMALL = ["--image-sizes", "64", "--image-n", "20"]


def test_the_command_without_options_trains_the_recipe_that_shipped():
    """The shipped checkpoint records the command that wrote it; every option of the recipe it
    names parses to the parser's default, so ``python -m experiments.ship_detector`` retrains
    it (``--workers``, ``--out`` and the like are not the recipe)."""
    prefix = "python -m experiments.ship_detector"
    command = load_detector(DEFAULT_CHECKPOINT).info["command"]
    assert command.startswith(prefix)
    shipped = vars(build_parser().parse_args(shlex.split(command[len(prefix) :])))
    default = vars(build_parser().parse_args([]))
    assert {k: shipped[k] for k in SHIPPED_RECIPE} == {k: default[k] for k in SHIPPED_RECIPE}
    assert {k: default[k] for k in SHIPPED_RECIPE} == SHIPPED_RECIPE
    assert build_parser().parse_args(["--average", "0"]).average is None  # the raw weights
    assert build_parser().parse_args(["--paired"]).paired and not default["paired"]


def test_the_two_commands_read_the_training_options_alike():
    """``experiments.detectors`` and ``experiments.ship_detector`` share their training options
    (``add_training_options``): the same flags, types and actions; only the defaults differ
    (the shipped recipe's). A decay of 0 is the raw weights, one outside (0, 1) is refused."""
    import argparse

    from experiments import detectors

    shared = argparse.ArgumentParser()
    detectors.add_training_options(shared)
    options = [a for a in shared._actions if a.dest != "help"]
    assert len(options) >= 10
    for parser in (detectors.build_parser(), build_parser()):
        by_dest = {a.dest: a for a in parser._actions}
        for action in options:
            mine = by_dest[action.dest]
            assert (mine.option_strings, mine.type, type(mine)) == (
                action.option_strings,
                action.type,
                type(action),
            )
    for parse in (detectors.build_parser().parse_args, build_parser().parse_args):
        assert parse(["--average", "0"]).average is None
        assert parse(["--average", "0.99"]).average == 0.99
        for bad in ("1", "-0.5", "nan", "x"):
            with pytest.raises(SystemExit):
                parse(["--average", bad])


@pytest.mark.slow  # trains a detector for 20 steps and builds the tiny benchmark: ~15 s
def test_ship_writes_a_checkpoint_and_its_table(tmp_path):
    out, md = tmp_path / "ckpt" / "tiny.safetensors", tmp_path / "results.md"
    common = ["--out", str(out), "--write", str(md), "--cache-dir", str(tmp_path / "cache")]
    main(["--tiny", "--max-steps", "20", "--eval-every", "10", "--workers", "0", *SMALL, *common])
    shipped = load_detector(out)
    assert shipped.info["command"].startswith("python -m experiments.ship_detector --tiny")
    assert shipped.info["train"]["steps"] <= 20 and shipped.info["data"]["seen"]
    assert out.with_suffix(".json").is_file()
    first = md.read_text()
    assert "<!-- report:shipped-detector:begin -->" in first and "**mean (held out)**" in first
    assert load_detector(out).views == "d4" and "views `d4`" in first  # the shipped recipe's
    # P(fake) is Platt's map of the validation logits, judged on the test split in the table
    assert shipped.probability is not None and "Platt's map" in first
    assert set(shipped.info["test"]["probability"]) == {"seen", "heldout"}
    assert Detector.load(out).probability_scaling == shipped.probability
    # the thresholds of larger images, calibrated on 4 real 64 px crops of the validation photos
    assert [k for k, _ in shipped.image_real_scores] == [4]
    # and the maps to P(fake) of those images, unless the 20-step network cannot rank them
    assert [k for k, _ in shipped.image_fake_scores] in ([4], [])
    assert shipped.info["image_calibration"] == {"split": "val", "n": 20, "sizes": {"4": 64}}
    assert "64 × 64 px (4 tiles)" in first
    detector = Detector.load(out)
    assert detector.threshold_for(4) != detector.threshold == detector.threshold_for(3)
    with pytest.raises(SystemExit):  # one patch is not a larger image
        main(["--tiny", "--image-sizes", "32", "--out", str(tmp_path / "x.safetensors")])
    md.write_text("# Results\n")
    main(["--table-only", *common])  # the section again, from the checkpoint alone
    assert md.read_text().strip() == first.strip()
    # options that shape a detector are not what --table-only reads: refused, named
    for extra in (["--lr", "0.5"], ["--members", str(out)], ["--views", "one"]):
        with pytest.raises(SystemExit):
            main(["--table-only", *common, *extra])
        assert md.read_text().strip() == first.strip()
    assert Detector.load(out).threshold == shipped.threshold


@pytest.mark.slow  # trains a detector for 20 steps and builds the tiny benchmark: ~15 s
def test_ship_with_d4_views_calibrates_on_the_averaged_logits(tmp_path):
    from assocmem.forensic.data import BenchmarkConfig, build_benchmark
    from assocmem.forensic.views import view_logits
    from experiments.detectors import family_split

    out, md, cache = tmp_path / "d4.safetensors", tmp_path / "results.md", tmp_path / "cache"
    main(["--tiny", "--max-steps", "20", "--eval-every", "10", "--workers", "0", *SMALL,
          "--views", "d4", "--out", str(out), "--write", str(md),
          "--cache-dir", str(cache)])  # fmt: skip
    shipped = load_detector(out)
    assert shipped.views == shipped.header["views"] == "d4" and Detector.load(out).views == "d4"
    assert "views `d4`" in md.read_text()
    config = BenchmarkConfig.tiny()
    val = build_benchmark(config, cache, progress=False).split("val", family_split(config).seen)
    reals = val.images[val.labels == 0]
    # the stored calibration logits are the d4 ones, not the plain ones: the same network on the
    # same patches, so they agree to float32 rounding (the one-view logits differ far more)
    d4 = sorted(view_logits(shipped.model, reals, "d4").tolist())
    one = sorted(view_logits(shipped.model, reals, "one").tolist())
    assert shipped.val_real_logits == pytest.approx(d4, abs=1e-5)
    assert shipped.val_real_logits != pytest.approx(one, abs=1e-5)


@pytest.mark.slow  # trains a detector for 20 steps and builds the tiny benchmark: ~15 s
def test_ship_with_a_weight_average_says_so(tmp_path, monkeypatch):
    import experiments.ship_detector as ship_module
    from experiments.score_cache import images_key

    scored = []  # every image set the patch scorer of the calibration and the tables reads

    def counted(model, images, views):
        scored.append(images_key(images))
        return view_logits(model, images, views)

    view_logits = ship_module.view_logits
    monkeypatch.setattr(ship_module, "view_logits", counted)
    out, md, cache = tmp_path / "ema.safetensors", tmp_path / "results.md", tmp_path / "cache"
    main(["--tiny", "--max-steps", "20", "--eval-every", "10", "--workers", "0", *SMALL,
          "--average", "0.9", "--out", str(out), "--write", str(md),
          "--cache-dir", str(cache)])  # fmt: skip
    assert load_detector(out).info["train"]["average"] == 0.9
    assert "exponential moving average of its weights (decay 0.9)" in md.read_text()
    # validation reals and fakes, test seen, test held out and the report's validation reals
    # (the same bytes as the calibration's): each set scored once
    assert len(scored) == len(set(scored)) == 4


@pytest.mark.slow  # trains a detector for 20 steps and builds the tiny benchmark: ~15 s
def test_ship_with_family_attribution_ships_the_detector_alone_and_says_so(tmp_path):
    out, md, cache = tmp_path / "attr.safetensors", tmp_path / "results.md", tmp_path / "cache"
    main(["--tiny", "--max-steps", "20", "--eval-every", "10", "--workers", "0", *SMALL,
          "--attribution", "1", "--out", str(out), "--write", str(md),
          "--cache-dir", str(cache)])  # fmt: skip
    shipped = load_detector(out)  # strict load: no attribution weights in the file
    assert shipped.info["train"]["attribution"] == 1.0
    assert "family-attribution head (weight 1, not shipped)" in md.read_text()
    assert not any("attribution" in k for k in shipped.model.state_dict())
    with pytest.raises(SystemExit):  # refused before any build
        main(["--tiny", "--attribution", "-1", "--out", str(tmp_path / "x.safetensors")])


@pytest.mark.slow  # trains two detectors for 4 steps and builds the tiny benchmark: ~15 s
def test_ship_an_ensemble_of_saved_members(tmp_path):
    import json

    import torch

    from assocmem.forensic.checkpoint import save_detector
    from assocmem.forensic.models.ensemble import LogitEnsemble
    from experiments.detectors import main as detectors_main

    cache, runs = tmp_path / "cache", tmp_path / "runs.json"
    detectors_main(["--tiny", "--cache-dir", str(cache), "--models", "npr_bn", "--seeds", "0", "1",
                    "--max-steps", "4", "--eval-every", "2", "--batch-size", "8", "--workers",
                    "0", "--save-weights", str(tmp_path / "w"), "--json", str(runs)])  # fmt: skip
    members = [r["weights"] for r in json.loads(runs.read_text())]
    out, md = tmp_path / "ens.safetensors", tmp_path / "results.md"
    main(["--tiny", "--cache-dir", str(cache), "--members", *members, "--views", "d4", *SMALL,
          "--out", str(out), "--write", str(md)])  # fmt: skip
    shipped = load_detector(out)
    assert shipped.architecture == "ensemble" and isinstance(shipped.model, LogitEnsemble)
    npr_bn = {"architecture": "npr", "arch_kwargs": {"norm": "batch"}}
    assert shipped.arch_kwargs["members"] == [npr_bn, npr_bn]
    assert shipped.info["model"] == "npr_bn (ensemble of 2)" and shipped.views == "d4"
    assert shipped.info["train"]["seed"] == "0+1"
    text = md.read_text()
    assert "the mean logit of 2 networks" in text and "seeds 0, 1" in text
    x = torch.rand(2, 3, 32, 32)
    single = [load_detector(out).model.members[i](x) for i in range(2)]
    torch.testing.assert_close(shipped.model(x), (single[0] + single[1]) / 2, rtol=0, atol=1e-6)
    assert Detector.load(out).score(torch.rand(1, 3, 40, 40))[0].tiles == 4
    # an ensemble of ensembles is refused when the file is read, as any unbuildable network
    nested = {"members": [{"architecture": "ensemble", "arch_kwargs": {}}]}
    with pytest.raises(ValueError, match="itself an ensemble"):
        save_detector(tmp_path / "bad.safetensors", shipped.model, architecture="ensemble",
                      arch_kwargs=nested, patch_size=32, val_real_logits=[0.0, 1.0])  # fmt: skip
    with pytest.raises(SystemExit):  # members of two recipes: a clear error, nothing written
        main(["--tiny", "--cache-dir", str(cache), "--members", members[0], members[0],
              "--out", str(tmp_path / "none.safetensors")])  # fmt: skip
    assert not (tmp_path / "none.safetensors").exists()


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """The package's checkpoint path pointed at a copy in ``tmp_path``: a test of what may write
    it never touches the real one, even where the command would (before it refused)."""
    import shutil

    import experiments.ship_detector as ship_module
    from assocmem.storage import sidecar_path

    copy = tmp_path / "shipped" / "detector.safetensors"
    copy.parent.mkdir()
    shutil.copy(DEFAULT_CHECKPOINT, copy)
    shutil.copy(sidecar_path(DEFAULT_CHECKPOINT), sidecar_path(copy))
    monkeypatch.setattr(ship_module, "DEFAULT_CHECKPOINT", copy)
    return copy


def test_the_shipped_checkpoint_is_written_only_on_purpose(tmp_path, capsys, shipped_copy):
    """The default ``--out`` is the package's own checkpoint: a run writes it only with
    ``--replace-shipped``, and a ``--tiny`` smoke run never does (it used to replace it, exit
    0); ``--help`` says so. Refused before the benchmark is built."""
    before = shipped_copy.read_bytes()
    cache = tmp_path / "cache"
    for argv, expected in (
        (["--tiny", "--max-steps", "2"], "--tiny run never replaces it"),
        (["--tiny", "--max-steps", "2", "--replace-shipped"], "--tiny run never replaces it"),
        (["--tiny", "--out", str(shipped_copy)], "--tiny run never replaces it"),
        (["--max-steps", "2"], "--replace-shipped"),
        (["--tiny", "--out", str(tmp_path / "x.safetensors"), "--replace-shipped"], "drop one"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--cache-dir", str(cache)])
        assert exit_.value.code == 2
        assert expected in capsys.readouterr().err
    assert shipped_copy.read_bytes() == before and not cache.exists()
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "default: the package's shipped one" in help_text and "--replace-shipped" in help_text
    # the recorded command still parses; the flag is no part of the recipe
    assert build_parser().parse_args(["--replace-shipped"]).replace_shipped


def test_the_regenerate_line_says_what_writing_the_shipped_checkpoint_takes(tmp_path):
    """The section's ``Regenerate:`` command is the one recorded; one recorded before
    ``--replace-shipped`` existed is flagged as needing it, one written elsewhere names its
    ``--out`` in the ``--table-only`` command."""
    from experiments.ship_detector import markdown

    header = load_detector(DEFAULT_CHECKPOINT).header
    text = markdown(header, DEFAULT_CHECKPOINT)
    assert f"Regenerate: `{header['info']['command']}` (recorded before `--replace-shipped`" in text
    recorded = {**header, "info": {**header["info"], "command": "x --replace-shipped"}}
    text = markdown(recorded, DEFAULT_CHECKPOINT)
    assert "recorded before" not in text and "the default `--out`" in text
    text = markdown(header, tmp_path / "d.safetensors")
    assert "the default `--out`" not in text and "recorded before" not in text
    assert f"--table-only --out {tmp_path / 'd.safetensors'} --write" in text


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--out", "{tmp}"], "is a directory"),
        (["--out", "{tmp}/afile/x.safetensors"], "is a file, not a folder"),
        (["--out", "{tmp}/x.json"], "its own sidecar"),
        (["--target-fpr", "1.5"], "--target-fpr"),
        (["--target-fpr", "-0.1"], "--target-fpr"),
        (["--image-sizes", "40"], "multiples of the patch"),
        (["--image-sizes", "64", "80"], "[80]"),
        (["--image-sizes", "64", "64"], "distinct"),
        (["--max-steps", "0"], "--max-steps"),
        (["--threads", "0"], "--threads"),
        (["--workers", "-1"], "--workers"),
        (["--batch-size", "0"], "--batch-size"),
        (["--lr-drops", "-1"], "--lr-drops"),
        # the stream's least batch (half real, half fake): a traceback once the benchmark was built
        (["--batch-size", "1"], "--batch-size must be >= 2"),
        # lr 0 trained to its patience, learning nothing, and shipped the result
        (["--lr", "0"], "--lr must be finite and > 0"),
        (["--lr", "nan"], "--lr must be finite and > 0"),
        # markers replace_section refuses: found after training before
        (["--write", "{tmp}/broken.md"], "1 begin and 0 end markers"),
    ],
)
def test_options_are_refused_before_training(tmp_path, capsys, argv, expected):
    """Each of these used to fail after the whole training run (a traceback, the work lost) or,
    for ``--image-sizes 64 80``, store 80 px crops as the 4-tile calibration in place of 64 px."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "broken.md").write_text("<!-- report:shipped-detector:begin -->\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = ["--out", str(tmp_path / "ok.safetensors")] if "--out" not in argv else []
    with pytest.raises(SystemExit) as exit_:
        main(["--tiny", "--cache-dir", str(tmp_path / "cache"), *out, *argv])
    assert exit_.value.code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "ok.safetensors").exists()


def test_blank_crops_are_left_out_of_the_image_calibration(monkeypatch):
    """A blank crop scores NaN (no textured tile; never called fake). One blank fake made the
    Platt fit fail, and then no size kept a map to P(fake); the calibration now fits on the
    crops that have a score, and says how many it left out."""
    import argparse

    import numpy as np
    import torch

    import experiments.ship_detector as ship

    reals = np.array([np.nan, *np.linspace(-3.0, 1.0, 40)])
    fakes = np.array([*np.linspace(0.0, 4.0, 40), np.nan, np.nan])
    monkeypatch.setattr(ship, "real_image_scores", lambda *a, **k: reals.copy())
    monkeypatch.setattr(ship, "fake_image_scores", lambda *a, **k: fakes.copy())
    bench = argparse.Namespace(config=argparse.Namespace(patch_size=32))
    args = argparse.Namespace(image_sizes=[64], image_n=41, views="one")
    with pytest.warns(UserWarning, match="blank crop") as caught:
        out = ship.image_calibration(torch.nn.Identity(), bench, ["splice"], args)
    assert [str(w.message) for w in caught] == [
        "64 px reals: 1 blank crop(s) left out", "64 px fakes: 2 blank crop(s) left out"
    ]  # fmt: skip
    cal = out[4]
    assert cal.reals == reals[1:].tolist() and cal.fakes == fakes[:-2].tolist()
    # every real crop blank: no threshold for that size, not a NaN one
    monkeypatch.setattr(ship, "real_image_scores", lambda *a, **k: np.full(5, np.nan))
    with pytest.warns(UserWarning, match="every real crop is blank"):
        assert ship.image_calibration(torch.nn.Identity(), bench, ["splice"], args) == {}


@pytest.mark.slow  # builds the tiny benchmark: ~10 s
def test_members_trained_on_another_split_are_refused(tmp_path, monkeypatch, capsys):
    # shipped with a family they trained on listed as held out, and unseen ones as "trained on"
    import experiments.ship_detector as ship_detector

    recipe = {"seen": ["ae_transconv", "ae_bilinear"], "model": "npr", "patch_size": 32}
    monkeypatch.setattr(ship_detector, "ensemble_of", lambda members: (recipe, None))
    out = tmp_path / "x.safetensors"
    with pytest.raises(SystemExit) as err:
        main(["--tiny", "--cache-dir", str(tmp_path / "cache"), "--members", "m.safetensors",
              "--out", str(out), *SMALL])  # fmt: skip
    assert err.value.code == 2 and not out.exists()
    assert "not the default seen families" in capsys.readouterr().err


def test_members_with_training_options_are_refused_before_any_work(tmp_path, capsys):
    # --members ships trained weights: --lr, --seed, --model, ... were accepted, ignored, and
    # written into the section's Regenerate line (an audit)
    members = [str(tmp_path / f"m{i}.safetensors") for i in range(2)]
    out = tmp_path / "ens.safetensors"
    for extra in (["--lr", "0.3"], ["--seed", "7", "--model", "smallcnn"], ["--paired"]):
        with pytest.raises(SystemExit) as exit_:
            main(["--tiny", "--cache-dir", str(tmp_path / "c"), "--members", *members, *extra,
                  "--out", str(out)])  # fmt: skip
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "--members ships those weights as they were trained" in err
        assert extra[0] in err
    assert not out.exists() and not (tmp_path / "c").exists()


def test_the_training_sentence_names_the_thread_count_the_run_had():
    # it said "on one thread" whatever --threads was (an audit); the shipped checkpoint's
    # header predates the entry: one thread, as it was trained
    import copy

    from experiments.ship_detector import training_sentence

    header = load_detector().header
    assert "s on one thread)." in training_sentence(header)
    four = copy.deepcopy(header)
    four["info"]["train"]["threads"] = 4
    assert "s on 4 threads)." in training_sentence(four)
