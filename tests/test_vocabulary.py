"""One option vocabulary across every `vargface` subcommand, and every output refused without --overwrite."""
import argparse
import json
import os
import re
from pathlib import Path

import pytest
from test_distill_teacher import save_tiny

from vargface.cli import build_parser
from vargface.options import ALIASES, VOCABULARY
from vargface.train.schema import KEYS, option_strings

ROOT = Path(__file__).resolve().parents[1]

# Each shared option: the attributes it must have wherever it appears.
SHARED = {
    "--out": dict(nargs=None),
    "--overwrite": dict(nargs=0, const=True),
    "--model": dict(metavar="PREFIX,EPOCH"),
    "--dataset": dict(nargs=None),
    "--ctx": dict(nargs=None),
    "--json": dict(nargs=0, const=True),
    "--workers": dict(metavar="N"),
    "--seed": dict(nargs=None),
    "--per-batch-size": dict(nargs=None, metavar="N"),
    "--image-size": dict(metavar="N"),
    "--target": dict(metavar={"PACKS", "IJBB|IJBC"}),  # verification packs; the IJB benchmark (InsightFace's)
    "--root": dict(metavar="DIR"),
}
# Options of one command or a few, each with what it means; every other option is in the vocabulary (or an alias of
# it) or a config key's (`vargface.train.schema`).
OWN = {
    "--config": "train/distill: an experiment config file", "--configs": "recipe: the folder of the config files",
    "--difficulty": "data synth: per-image variation", "--dry-run": "pipelines: print the commands only",
    "--eval-ctx": "recipe: devices of verification", "--far": "tar-at-far: the FARs",
    "--first-identity": "data synth: number of the first identity", "--identities": "synthetic identities",
    "--heldout-identities": "experiment: held-out identities", "--heldout-per-identity": "experiment: their images",
    "--per-identity": "images per synthetic identity", "--pairs": "pairs in a verification pack (synth-ijb: template pairs)",
    "--lfr-list": "recipe: the LFR2019 test list", "--list": "flops: list the presets",
    "--max-faults": "data check: faults listed", "--nfolds": "verify: cross-validation folds",
    "--no-flip": "embed/compare: without the mirror", "--opt": "flops: the old spelling of --net-opt",
    "--quality": "JPEG quality", "--quick": "experiment: a smoke run", "--rec": "data synth: write a .rec",
    "--reuse": "distill cache: keep a cache that checks out", "--roc": "verify, ijb: the ROC curve PNG",
    "--seeds": "experiment: number of seeds", "--set": "recipe: --KEY VALUE for the training commands",
    "--strict": "data: refuse what would be skipped", "--student-steps": "experiment: updates per student round",
    "--taps": "flops: list the taps", "--teacher-steps": "experiment: the teacher's updates",
    "--tile": "tar-at-far, identify: block size", "--tolerance": "export: the parity bound",
    "--variants": "experiment: the ablations", "--budgets": "experiment: the budgets of a sweep",
    "--subjects": "data synth-ijb: identities", "--templates-per-subject": "data synth-ijb: templates of each",
    "--mode": "ijb: the test mode NxDyFz", "--distractor-list": "identify: the distractors' image paths",
    "--noise": "identify: lists of mislabelled images", "--sizes": "identify: gallery sizes in distractors",
    "--rank": "identify: the highest rank reported", "--cmc": "identify: the CMC curve PNG",
}
# Spellings the shared names replaced: none may come back.
RETIRED = {"--batch-size", "--data-dir", "--data", "--work", "--output", "--out-dir", "--force", "--data-root"}
# Commands that write an output: each takes --overwrite (train/distill write their run under --prefix).
WRITERS = {"data synth", "data lst", "data rec", "data unpack", "data pairs", "verify", "lfr features", "export",
           "embed", "plot-log", "distill cache", "train", "distill", "demo", "experiment distill", "recipe lfr-light",
           "recipe recursive", "data synth-ijb", "ijb", "identify", "merge-fc7"}
READS_DATASET = {"data unpack", "data check", "distill cache", "train", "distill"}
PRINTS_JSON = {"data synth", "data lst", "data rec", "data unpack", "data check", "data pairs", "flops", "verify",
               "tar-at-far", "export", "embed", "compare", "lfr features", "distill cache", "data synth-ijb", "ijb",
               "identify"}


def shared_attribute(action, attribute, value):
    """The action's attribute is the shared value (or one of a set of them)."""
    found = getattr(action, attribute)
    return found in value if isinstance(value, set) else found == value


def leaf_parsers(parser, path=()):
    """(command path, parser) of every subcommand that runs something."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if path and (not groups or parser.get_default("func")):
        yield " ".join(path), parser
    for group in groups:
        for name, sub in group.choices.items():
            yield from leaf_parsers(sub, path + (name,))


def test_every_option_of_every_command_is_in_the_vocabulary():
    """Each option is a vocabulary option (with its one meaning and attributes), an older spelling attached to
    it, a config key's option, or one command's own; no retired spelling is left."""
    schema = {spelling for key in KEYS for spelling in option_strings(key)}
    canonical = {alias: option for option, aliases in ALIASES.items() for alias in aliases}
    used = set()
    for command, parser in leaf_parsers(build_parser()):
        for action in parser._actions:
            strings = [o for o in action.option_strings if o not in ("-h", "--help")]
            for option in strings:
                used.add(option)
                if option in canonical:
                    assert canonical[option] in strings, (command, option, "is an alias of", canonical[option])
                else:
                    assert option in VOCABULARY or option in schema or option in OWN, (command, option)
            if strings and strings[0] in SHARED:
                for attribute, value in SHARED[strings[0]].items():
                    assert shared_attribute(action, attribute, value), (command, strings[0], attribute)
    assert set(OWN) <= used and set(VOCABULARY) <= used


def listed_commands(cell):
    """The commands a table cell names: `data synth/rec`, `train` -> ['data synth', 'data rec', 'train']."""
    commands = []
    for item in re.findall(r"`([^`]+)`", cell):
        group, _, subs = item.rpartition(" ")
        commands += [f"{group} {sub}".strip() for sub in subs.split("/")]
    return commands


def test_the_readme_table_is_the_vocabulary():
    """One row per vocabulary option, naming exactly the commands that take it."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### CLI vocabulary"):].split("\n## ")[0]
    rows = re.findall(r"^\| `(--[\w-]+)[^`]*` \|", table, re.M)
    assert sorted(rows) == sorted(VOCABULARY)
    leaves = dict(leaf_parsers(build_parser()))
    for option in VOCABULARY:
        row = next(line for line in table.splitlines() if line.startswith(f"| `{option}"))
        listed = listed_commands(row.rstrip(" |").rpartition(" | ")[2])
        taking = [command for command, parser in leaves.items()
                  if any(option in action.option_strings for action in parser._actions)]
        assert sorted(listed) == sorted(taking), (option, "listed", listed, "taken by", taking)
    for option, aliases in ALIASES.items():
        row = next(line for line in table.splitlines() if line.startswith(f"| `{option}"))
        assert all(f"`{alias}`" in row for alias in aliases), row


def test_every_config_key_has_help_and_a_check():
    from vargface.train.schema import BY_NAME, RESUME_KEYS

    for key in KEYS:
        assert len(key.help) > 10, key.name
        assert key.checked(), f"{key.name}: no range, choices or rule"
        assert not key.cli_only or key.kind == "bool", key.name
    assert {"resume", "trust_states", "overwrite"} == {key.name for key in KEYS if key.cli_only}
    assert {"per_batch_size", "seed", "network", "image_size", "emb_size", "loss_m2"} <= set(RESUME_KEYS)
    assert BY_NAME["data_workers"].option == "--workers" and BY_NAME["val_targets"].option == "--target"
    # the checks can fail: a value outside each kind of check is refused
    from vargface.errors import VargfaceError

    for name, bad in (("lr", "inf"), ("kvstore", "nccl2"), ("image_size", "32,48"), ("lr_steps", "3,3"),
                      ("ctx", "tpu:0"), ("pretrained", "no-epoch"), ("kd", ["kl:embedding"])):
        with pytest.raises(VargfaceError, match=re.escape(BY_NAME[name].option)):
            BY_NAME[name].read(bad)


def test_old_spellings_still_work():
    parser = build_parser()
    for argv, dest, value in ((["data", "synth", "--out", "o", "--identities", "1", "--per-identity", "1", "--size",
                                "40"], "image_size", 40),
                              (["data", "rec", "src", "--out", "o", "--image-root", "r"], "root", "r"),
                              (["flops", "r50", "--input-size", "56"], "image_size", 56),
                              (["recipe", "lfr-light", "--targets", "lfw", "--lfr-root", "r"], "target", "lfw"),
                              (["train", "--val-targets", "a,b"], "val_targets", "a,b"),
                              (["verify", "--model", "m,1", "--targets", "a.bin"], "target", "a.bin")):
        assert getattr(parser.parse_args(argv), dest) == value, argv


def test_every_subcommand_speaks_one_vocabulary():
    config_keys = {spelling: key.name for key in KEYS for spelling in option_strings(key)}
    leaves = dict(leaf_parsers(build_parser()))
    assert {"data synth", "data check", "verify", "lfr features", "distill cache", "distill", "plot-log"} <= set(leaves)
    for command, parser in leaves.items():
        actions = [a for a in parser._actions if not isinstance(a, argparse._SubParsersAction)]
        options = {flag: a for a in actions for flag in a.option_strings}
        positional = [a.dest for a in actions if not a.option_strings]
        assert not [p for p in positional if p.startswith("out") or p.endswith("dir")], (command, positional)
        assert not RETIRED & set(options), (command, RETIRED & set(options))
        for flag, expected in SHARED.items():
            if flag in options:
                action = options[flag]
                assert action.dest in (flag[2:].replace("-", "_"), config_keys.get(flag)), (command, flag)
                for attribute, value in expected.items():
                    assert shared_attribute(action, attribute, value), (command, flag, attribute)
        assert ("--overwrite" in options) == (command in WRITERS), command
        assert "--out" not in options or "--overwrite" in options, command
        if command in READS_DATASET:
            assert "--dataset" in options, command
        if command in PRINTS_JSON:
            assert "--json" in options, command


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from vargface.data.synth import make_synthetic, make_synthetic_rec
    from vargface.data.verification import make_synthetic_bin

    root = tmp_path_factory.mktemp("vocab")
    faces = root / "faces"
    make_synthetic(faces, identities=2, per_identity=3, size=32, seed=0, workers=1, progress=False)
    names = sorted(str(p.relative_to(faces)) for p in faces.rglob("*.jpg"))
    (root / "list.txt").write_text("\n".join(names[:2]) + "\n")
    make_synthetic_rec(str(root / "data"), identities=4, per_identity=4, size=32, seed=0, workers=1, progress=False)
    make_synthetic_bin(str(root / "val.bin"), identities=4, pairs=8, size=32, seed=0, workers=1)
    model = save_tiny(str(root / "teacher"), emb_size=16)[0]
    return dict(faces=faces, images=[faces / n for n in names[:2]], list=root / "list.txt", data=root / "data",
                pack=root / "val.bin", model=model)


# command -> (argv with OUT for the output, the option that names it, output is a folder)
OUTPUT_COMMANDS = {
    "data synth": (lambda i: ["data", "synth", "--out", "OUT", "--identities", 2, "--per-identity", 2, "--image-size",
                              32, "--workers", 1], "output", True),
    "data synth-ijb": (lambda i: ["data", "synth-ijb", "--out", "OUT", "--subjects", 2, "--templates-per-subject", 2,
                                  "--workers", 1], "output", True),
    "data lst": (lambda i: ["data", "lst", i["faces"], "--out", "OUT"], "output", False),
    "data rec": (lambda i: ["data", "rec", i["faces"], "--out", "OUT", "--image-size", 32, "--workers", 1], "output",
                 True),
    "data unpack": (lambda i: ["data", "unpack", "--dataset", i["data"], "--out", "OUT"], "output", True),
    "data pairs": (lambda i: ["data", "pairs", i["faces"], "--out", "OUT", "--pairs", 4, "--image-size", 32,
                              "--workers", 1], "output", False),
    "embed": (lambda i: ["embed", "--model", i["model"], "--out", "OUT", *i["images"]], "--out", False),
    "export": (lambda i: ["export", "--model", i["model"], "--out", "OUT"], "--out", False),
    "lfr features": (lambda i: ["lfr", "features", i["list"], "--model", i["model"], "--root", i["faces"], "--out",
                                "OUT"], "--out", False),
    "verify --roc": (lambda i: ["verify", "--model", i["model"], "--target", i["pack"], "--nfolds", 2, "--roc", "OUT"],
                     "--roc", False),
    "distill cache": (lambda i: ["distill", "cache", "--teacher", i["model"], "--dataset", i["data"], "--out", "OUT"],
                      "output", False),
}


@pytest.mark.parametrize("command", sorted(OUTPUT_COMMANDS))
def test_an_existing_output_is_refused_then_replaced_with_overwrite(command, inputs, tmp_path, run_cli):
    make_argv, option, folder = OUTPUT_COMMANDS[command]
    out = tmp_path / "existing"
    argv = [str(out) if a == "OUT" else a for a in make_argv(inputs)]
    if folder:  # the command's own earlier output (what it may replace; tests/test_outputs.py: what it may not)
        assert run_cli(*argv).returncode == 0
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    else:
        out.write_text("old")
    refused = run_cli(*argv)
    assert refused.returncode == 1 and option in refused.stderr and "pass --overwrite" in refused.stderr, \
        refused.stderr
    if folder:
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    else:
        assert out.read_text() == "old"
    replaced = run_cli(*argv, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    if folder:
        assert all(p.stat().st_mtime_ns != before.get(p) for p in out.rglob("*") if p.is_file())
    else:
        assert out.read_bytes() != b"old" and os.path.getsize(out) > 0


def test_train_distill_and_plot_log_refuse_an_existing_run_without_resume_or_overwrite(inputs, tmp_path, run_cli):
    prefix = tmp_path / "run" / "model"
    train = ["train", "--network", "r18_tiny", "--dataset", inputs["data"], "--image-size", 32, "--emb-size", 16,
             "--per-batch-size", 4, "--max-steps", 1, "--verbose", 1, "--frequent", 1, "--target", "",
             "--prefix", prefix]
    assert run_cli(*train).returncode == 0
    refused = run_cli(*train)
    assert refused.returncode == 1 and f"--prefix {prefix} already holds a run" in refused.stderr
    assert "--resume" in refused.stderr and "--overwrite" in refused.stderr
    log = tmp_path / "run" / "model-log.jsonl"
    lines = log.read_text()
    replaced = run_cli(*train, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert log.read_text() != lines  # a new run wrote its own log

    curves = tmp_path / "curves.png"
    curves.write_text("old")
    refused = run_cli("plot-log", log, "--out", curves)
    assert refused.returncode == 1 and f"--out {curves} exists" in refused.stderr and curves.read_text() == "old"
    assert run_cli("plot-log", log, "--out", curves, "--overwrite").returncode == 0
    assert curves.read_bytes().startswith(b"\x89PNG")

    student = tmp_path / "student" / "model"
    distill = ["distill", "--teacher", inputs["model"], "--network", "r18_tiny", "--dataset", inputs["data"],
               "--image-size", 32, "--emb-size", 16, "--per-batch-size", 4, "--max-steps", 1, "--verbose", 1,
               "--target", "", "--prefix", student]
    assert run_cli(*distill).returncode == 0
    lineage = tmp_path / "student" / "model-lineage.json"
    lineage.write_text(lineage.read_text().replace('"done"', '"old"'))  # marks the first chain's record
    refused = run_cli(*distill)
    assert refused.returncode == 1 and f"--prefix {student} already holds a run" in refused.stderr
    assert '"old"' in lineage.read_text()
    replaced = run_cli(*distill, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    generations = json.loads(lineage.read_text())["generations"]
    assert [g["status"] for g in generations] == ["done"]


def test_json_prints_one_json_document_and_no_progress(inputs, run_cli):
    done = run_cli("data", "check", "--dataset", inputs["data"], "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["images"] == 16 and done.stderr == ""
    done = run_cli("compare", "--model", inputs["model"], *inputs["images"], "--json")
    result = json.loads(done.stdout)
    assert done.returncode == 0 and -1.0 <= result["cosine"] <= 1.0


def test_progress_bars_only_on_a_terminal_and_never_under_json(monkeypatch):
    from vargface import options

    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    options.show_progress(True)  # as `vargface` sets it for a command without --json
    try:
        assert not options.progress_bar(range(3)).disable
        assert options.progress_bar(range(3), enabled=False).disable
        options.show_progress(False)
        assert options.progress_bar(range(3)).disable
    finally:
        options.show_progress(True)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    assert options.progress_bar(range(3)).disable
