"""One declared run configuration: the command line wins over a config file for every key, the saved
PREFIX-config.py reruns what ran, switches that lower a safety barrier come from the command line only, a run's
files are one object (--overwrite removes them all), and --resume checks what the state itself records."""
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_distill_teacher import save_tiny

from vargface.errors import VargfaceError
from vargface.symbols import get_symbol
from vargface.symbols.checkpoint import load_checkpoint
from vargface.symbols.flops import count
from vargface.train.config import read_config_file, resolve
from vargface.train.run_files import RunFiles

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--network", "r18_tiny", "--image-size", "32", "--per-batch-size", "8", "--frequent", "1", "--ctx", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two small data folders of 8 identities (other images in the second) and a verification pack in the first."""
    from vargface.data.synth import make_synthetic_rec
    from vargface.data.verification import make_synthetic_bin

    root = tmp_path_factory.mktemp("config")
    make_synthetic_rec(str(root / "data"), 8, 6, size=32, seed=0, progress=False)
    make_synthetic_bin(str(root / "data" / "heldout.bin"), 8, 20, size=32, seed=0)
    make_synthetic_rec(str(root / "other"), 8, 6, size=32, seed=3, progress=False)
    return root


def test_the_forms_registry_is_the_docs_table_and_the_help(capsys):
    from vargface.cli import build_parser
    from vargface.train.distill_loss import FORMS

    docs = (ROOT / "docs" / "distillation.md").read_text()
    assert re.findall(r"^\| `(\w+)` \| (.*) \|$", docs, re.M) == [(n, f.help) for n, f in FORMS.items()]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["distill", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(f"{name} {form.help}" in help_text for name, form in FORMS.items())


def test_a_run_config_is_frozen_and_changed_copies_are_checked():
    config = resolve({"network": "r18_tiny"})
    with pytest.raises(TypeError, match="frozen"):
        config.lr = 0.5
    with pytest.raises(TypeError):
        config.net_opts["use_se"] = False
    assert config.replace(lr="0.5").lr == 0.5 and config.lr == 0.1
    with pytest.raises(VargfaceError, match="--lr inf"):
        config.replace(lr=float("inf"))


def test_a_preset_named_on_the_command_line_brings_its_own_values():
    """The file's network, loss and data set lose to the command line's, with the keys that belong to them."""
    tiny_file = ROOT / "configs" / "r18_tiny_synthetic.py"
    y1 = resolve({"network": "y1"}, file=tiny_file)
    assert (y1.network, y1.emb_size, y1.image_size) == ("y1", 128, (112, 112))
    assert (y1.per_batch_size, y1.max_steps) == (8, 4)  # the file's training settings stay
    student = resolve({"network": "vargfacenet_tiny"}, file=ROOT / "configs" / "vargfacenet_recursive.py",
                      command="distill")
    assert student.network == "vargfacenet_tiny" and student.emb_size == 64 and student.generations == 2
    cosface = resolve({"loss": "cosface"}, file=ROOT / "configs" / "r100_retina.py")
    assert (cosface.loss, cosface.loss_m2, cosface.loss_m3) == ("cosface", 0.0, 0.35)
    same = resolve({"loss": "arcface", "loss_s": "32"}, file=ROOT / "configs" / "r100_retina.py")
    assert (same.loss_m2, same.loss_s) == (0.5, 32.0)


def test_the_command_line_wins_and_the_saved_config_reruns_what_ran(data, tmp_path, run_cli):
    """Network, loss, sizes and data set from the command line over a file that names others: the saved config and
    the checkpoint's parameter count say what ran, and the saved file reruns as its header says."""
    config = tmp_path / "experiment.py"
    config.write_text(f"network = 'r18_tiny'\nloss = 'arcface'\ndataset = {str(data / 'other')!r}\n"
                      f"image_size = [48, 48]\nemb_size = 32\nper_batch_size = 4\nmax_steps = 2\nverbose = 2\n")
    prefix = tmp_path / "run" / "model"
    done = run_cli("train", "--config", config, "--network", "vargfacenet_tiny", "--loss", "cosface", "--image-size",
                   "40", "--dataset", data / "data", "--prefix", prefix, "--frequent", "1")
    assert done.returncode == 0, done.stderr
    saved = read_config_file(f"{prefix}-config.py")
    assert (saved["network"], saved["loss"], saved["image_size"], saved["emb_size"]) == \
        ("vargfacenet_tiny", "cosface", [40, 40], 64)
    assert (saved["loss_m2"], saved["loss_m3"], saved["dataset_path"], saved["num_classes"]) == \
        (0.0, 0.35, str(data / "data"), 8)
    assert saved["per_batch_size"] == 4 and "trust_states" not in saved and "resume" not in saved
    _, arg, _ = load_checkpoint(str(prefix), 1)
    expected = count(get_symbol("vargfacenet_tiny", input_size=40), (1, 3, 40, 40))["params"]
    assert sum(v.size for v in arg.values()) == expected
    # one line names the saved settings, after they were checked; the first verification is the baseline
    assert f"settings checked, saved to {prefix}-config.py" in done.stdout and "{" not in done.stdout
    assert "[0] verification: heldout" in done.stdout and "(baseline: before the first update)" in done.stdout

    header = Path(f"{prefix}-config.py").read_text().splitlines()[0]
    command = re.search(r"`vargface (train --config \S+ --prefix NEW_PREFIX)`", header).group(1).split()
    again = tmp_path / "again" / "model"
    done = run_cli(*[str(again) if word == "NEW_PREFIX" else word for word in command])
    assert done.returncode == 0, done.stderr
    rerun = read_config_file(f"{again}-config.py")
    assert {k: v for k, v in rerun.items() if k != "prefix"} == {k: v for k, v in saved.items() if k != "prefix"}


def test_a_config_file_cannot_lower_a_safety_barrier(tmp_path, run_cli):
    for line, option in (("trust_states = True", "--trust-states"), ("resume = True", "--resume"),
                         ("overwrite = True", "--overwrite")):
        evil = tmp_path / "evil.py"
        evil.write_text(f"network = 'r18_tiny'\n{line}\n")
        done = run_cli("train", "--config", evil)
        assert done.returncode == 1 and f"{line} lowers a safety barrier" in done.stderr and option in done.stderr
    old = tmp_path / "old.py"  # saved configs of earlier versions record the switch as off: that is no barrier
    old.write_text("network = 'r18_tiny'\ntrust_states = False\n")
    config = resolve({"trust_states": True}, file=old)
    assert config.trust_states is True  # typed on the command line
    from vargface.train.config import save_config

    save_config(config, tmp_path / "saved.py")
    assert "trust_states" not in read_config_file(tmp_path / "saved.py")


def test_overwrite_replaces_every_file_of_the_old_run_and_nothing_else(data, tmp_path, run_cli):
    prefix = tmp_path / "ow" / "model"
    train = ["train", *TINY, "--dataset", data / "data", "--target", "heldout", "--prefix", prefix, "--ckpt", "2",
             "--verbose", "1"]
    assert run_cli(*train, "--max-steps", "3").returncode == 0
    files = RunFiles(prefix)
    old = files.existing()
    assert files.params(3) in old and files.best.symbol in old and files.log in old
    (prefix.parent / "model-b-0001.params").write_text("another run's")
    (prefix.parent / "notes.txt").write_text("mine")
    refused = run_cli(*train, "--max-steps", "1")
    assert refused.returncode == 1 and f"--prefix {prefix} already holds a run" in refused.stderr
    assert files.existing() == old
    done = run_cli(*train, "--max-steps", "1", "--overwrite")
    assert done.returncode == 0, done.stderr
    assert f"removed the {len(old)} files of the previous run" in done.stdout
    assert not os.path.exists(files.params(2)) and not os.path.exists(files.params(3))
    assert [json.loads(line)["step"] for line in open(files.log)] == [0, 1, 1]  # baseline, train, verify
    assert (prefix.parent / "model-b-0001.params").read_text() == "another run's"
    assert (prefix.parent / "notes.txt").read_text() == "mine"


def test_resume_checks_what_the_state_records_and_a_finished_run_stays_as_it_is(data, tmp_path, run_cli):
    prefix = tmp_path / "first" / "model"
    train = ["train", *TINY, "--dataset", data / "data", "--target", "heldout", "--prefix", prefix, "--verbose", "2"]
    assert run_cli(*train, "--max-steps", "2").returncode == 0
    os.remove(f"{prefix}-config.py")  # the state alone still knows the run
    refused = run_cli(*train, "--max-steps", "3", "--resume", "--per-batch-size", "4")
    assert refused.returncode == 1 and "per_batch_size 8 -> 4" in refused.stderr and "-state.json" in refused.stderr
    refused = run_cli(*train, "--max-steps", "3", "--resume", "--dataset", data / "other", "--target", "")
    assert refused.returncode == 1 and "data {" in refused.stderr

    # the run folder moves: the state finds its files, and reports the best checkpoint where it is now
    moved = tmp_path / "moved"
    shutil.move(str(prefix.parent), str(moved))
    prefix = moved / "model"
    before = {path: Path(path).read_bytes() for path in RunFiles(prefix).existing()}
    done = run_cli("train", *TINY, "--dataset", data / "data", "--target", "heldout", "--prefix", prefix,
                   "--verbose", "2", "--max-steps", "2", "--resume")
    assert done.returncode == 0, done.stderr
    assert f"{prefix} already finished at update 2; nothing changed" in done.stdout
    assert f"best {prefix}_best,1" in done.stdout
    assert {path: Path(path).read_bytes() for path in RunFiles(prefix).existing()} == before


def test_state_fields_of_the_wrong_type_are_named(tmp_path):
    from vargface.train import checkpoint as ckpt

    files = RunFiles(tmp_path / "m")
    Path(files.state_params(1)).write_bytes(b"")
    for field, value, expected in (("num_update", "abc", "a whole number >= 0"), ("epoch", -1, "a whole number"),
                                   ("lr_scale", "x", "a number >= 0"), ("best", [1], "an object")):
        state = {"version": 2, "params": os.path.basename(files.state_params(1)), "num_update": 1, "epoch": 0,
                 "batch": 1, field: value}
        Path(files.state).write_text(json.dumps(state))
        with pytest.raises(VargfaceError, match=f"{re.escape(files.state)}: field '{field}' is .* expected {expected}"):
            ckpt.load_state(files)


def test_runs_written_before_this_change_still_resume(data, tmp_path):
    """A state without the resume record or the finished flag, and an absolute best checkpoint; a saved config
    with every key sorted, `trust_states = False`, and no data_workers: it resumes, and its config still guards."""
    from vargface.train.config import generate_config
    from vargface.train.trainer import fit

    prefix = str(tmp_path / "old" / "model")
    settings = dict(per_batch_size=8, max_steps=2, verbose=2, frequent=1, ctx="cpu", prefix=prefix,
                    val_targets="heldout")
    config = generate_config("r18_tiny", str(data / "data"), "arcface", **settings)
    fit(config, log=lambda line: None)
    files = RunFiles(prefix)
    state = json.load(open(files.state))
    number = state.pop("best_number")
    for key in ("run", "finished"):
        state.pop(key)
    state.update(best_checkpoint=f"/gone/elsewhere/model_best,{number}")
    json.dump(state, open(files.state, "w"))
    facts = json.loads(Path(files.config).read_text().splitlines()[1][len("# run: "):])
    values = read_config_file(files.config)
    values.pop("data_workers")
    lines = ["# resolved config", "# run: " + json.dumps(facts)] + [f"{k} = {values[k]!r}" for k in sorted(values)]
    Path(files.config).write_text("\n".join(lines + ["trust_states = False"]) + "\n")
    with pytest.raises(VargfaceError, match="per_batch_size 8 -> 4"):
        fit(generate_config("r18_tiny", str(data / "data"), "arcface", **dict(settings, max_steps=3, per_batch_size=4,
                                                                                  resume=True)), log=lambda line: None)
    result = fit(generate_config("r18_tiny", str(data / "data"), "arcface", **dict(settings, max_steps=3,
                                                                                   resume=True)), log=lambda line: None)
    assert result["num_update"] == 3 and result["best_checkpoint"].startswith(prefix + "_best,")


def test_a_distillation_chain_holds_its_prefix_from_start_to_end(data, tmp_path, monkeypatch):
    from vargface.train.config import generate_config
    from vargface.train.distill import DistillPlugin, distill
    from vargface.train.trainer import fit

    teacher = save_tiny(str(tmp_path / "teacher"), emb_size=16, input_size=32)[0]
    prefix = tmp_path / "chain" / "student"
    tried = []
    original = DistillPlugin.extra_data

    def second_writer(self, batch):
        if not tried:  # during generation 1, a training on the chain's prefix is refused
            with pytest.raises(VargfaceError, match="another training writes to this prefix") as error:
                fit(generate_config("r18_tiny", str(data / "data"), "arcface", prefix=str(prefix), max_steps=1,
                                    per_batch_size=8, val_targets="", overwrite=True), log=lambda line: None)
            tried.append(str(error.value))
        return original(self, batch)

    monkeypatch.setattr(DistillPlugin, "extra_data", second_writer)
    config = generate_config("r18_tiny", str(data / "data"), "arcface", command="distill", teacher=teacher,
                             emb_size=16, per_batch_size=8, max_steps=1, verbose=1, frequent=1, val_targets="",
                             prefix=str(prefix))
    lines = []
    manifest = distill(config, log=lines.append)
    assert tried and manifest["generations"][0]["status"] == "done"
    # the generation's lines say whose they are; one names its saved settings
    assert f"distill gen1: settings checked, saved to {prefix}-gen1-config.py" in lines
    assert not any(line.startswith("vargface train") for line in lines)
    assert not os.path.exists(f"{prefix}.lock") and os.path.exists(f"{prefix}-config.py")
    header = Path(f"{prefix}-gen1-config.py").read_text().splitlines()[0]
    assert f"rerun the chain with `vargface distill --config {prefix}-config.py --prefix NEW_PREFIX`" in header


def test_no_mxnet_banner_in_any_output(data, tmp_path, capfd):
    from vargface.cli import main

    prefix = tmp_path / "quiet" / "model"
    train = ["train", *TINY, "--dataset", data / "data", "--target", "heldout", "--max-steps", "1", "--verbose", "1",
             "--prefix", prefix]
    for argv in (train, ["verify", "--model", f"{prefix},1", "--target", data / "data" / "heldout.bin"]):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in argv])
        assert exit_info.value.code == 0
        out, err = capfd.readouterr()
        assert "Subgraph backend" not in out + err and "MXNET_SUBGRAPH_BACKEND" not in out + err, err


def test_workers_reach_the_training_iterator(data, tmp_path, monkeypatch):
    from vargface.data.iterator import FaceRecordIter
    from vargface.train.config import generate_config
    from vargface.train.trainer import fit

    threads = []
    original = FaceRecordIter.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        threads.append(self._pool._max_workers)

    monkeypatch.setattr(FaceRecordIter, "__init__", spy)
    fit(generate_config("r18_tiny", str(data / "data"), "arcface", data_workers="1", max_steps=1, per_batch_size=8,
                        val_targets="", ctx="cpu", prefix=str(tmp_path / "w")), log=lambda line: None)
    assert threads == [1]
    assert resolve({"network": "r18_tiny"}).data_workers is None  # unset: the usable cores


def test_targets_are_names_file_names_or_paths(data):
    from vargface.train.config import generate_config, resolve_dataset, verification_packs

    folder = str(data / "data")
    for targets in ("heldout", "heldout.bin", os.path.join(folder, "heldout.bin")):
        config = resolve_dataset(generate_config("r18_tiny", folder, "arcface", val_targets=targets))
        assert verification_packs(config) == [("heldout", os.path.join(folder, "heldout.bin"))]
    assert resolve_dataset(generate_config("r18_tiny", folder, "arcface")).val_targets == ("heldout",)
    # '' is none, as the help says, not the folder's default (all its packs); so is an empty list in a config file
    for none in ("", []):
        config = resolve_dataset(generate_config("r18_tiny", folder, "arcface", val_targets=none))
        assert verification_packs(config) == []


def test_run_files_name_every_file_of_a_run_and_no_other(tmp_path):
    files = RunFiles(tmp_path / "model")
    names = ["model-symbol.json", "model-0001.params", "model_best-0003.params", "model-state.json",
             "model-state-00000004.params", "model-state-00000004-optimizer.params", "model-config.py",
             "model-log.jsonl", "model-lineage.json", "model-gen1-0001.params", "model-gen2_best-symbol.json"]
    others = ["model-b-0001.params", "model.lock", "modelx-0001.params", "notes.txt", "model-worker1-0001.params"]
    for name in names + others:
        (tmp_path / name).write_text("")
    assert sorted(os.path.basename(p) for p in files.existing()) == sorted(names)
    assert files.model(1) == f"{tmp_path / 'model'},1" and files.generation(2).best.params(3) == \
        str(tmp_path / "model-gen2_best-0003.params")
    assert files.has_resumable_state() and not RunFiles(tmp_path / "other").has_resumable_state()


def test_flops_takes_the_network_options_of_train(run_cli):
    for argv, options in ((["vargfacenet", "--net-multiplier", "0.25", "--image-size", "56"],
                           dict(multiplier=0.25, input_size=56)),
                          (["pocketnet_s128", "--net-channels", "8", "--net-layers", "4", "--emb-size", "64"],
                           dict(channels=8, layers=4, emb_size=64)),
                          (["r50", "--net-num-layers", "18", "--input-size", "64"], dict(num_layers=18, input_size=64))):
        done = run_cli("flops", *argv, "--json")
        assert done.returncode == 0, done.stderr
        side = options.get("input_size", 112)
        assert json.loads(done.stdout)["params"] == count(get_symbol(argv[0], **options), (1, 3, side, side))["params"]


@pytest.mark.parametrize("script, config", [("train_r100.sh", "r100_retina.py"),
                                            ("train_vargfacenet.sh", "vargfacenet_retina.py")])
def test_training_scripts_are_thin_config_wrappers(script, config, data, tmp_path):
    """Run with a stand-in `vargface` that prints its arguments: the command is --config FILE plus what the
    environment sets, and it resolves to the file's settings."""
    from vargface.cli import build_parser
    from vargface.train.config import config_from_args

    echo = tmp_path / "echo.sh"
    echo.write_text("#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\n")
    echo.chmod(0o755)
    env = dict(os.environ, VARGFACE=str(echo), DATA=str(data / "data"), PREFIX=str(tmp_path / "m"))
    env.pop("CTX", None)
    out = subprocess.run(["bash", str(ROOT / "scripts" / script), "--lr", "0.05"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    argv = out.stdout.splitlines()
    assert argv[:3] == ["train", "--config", str(ROOT / "configs" / config)]
    resolved = config_from_args(build_parser().parse_args(argv))
    from_file = resolve({"dataset": str(data / "data"), "prefix": str(tmp_path / "m"), "lr": "0.05"},
                        file=ROOT / "configs" / config)
    assert resolved == from_file and resolved.max_steps == 180000
