"""Where a run lives on disk: every file `vargface train` and `vargface distill` write under a prefix, named here
and nowhere else (docs/formats.md#checkpoints).

PREFIX-symbol.json + PREFIX-%04d.params    embedding checkpoints (InsightFace's layout)
PREFIX_best-...                            the best verification round's checkpoint
PREFIX-state.json + PREFIX-state-%08d...   the training state --resume continues (-fc7: a sharded classifier)
PREFIX-config.py, PREFIX-log.jsonl         what ran, and its log
PREFIX-lineage.json, PREFIX-genK-...       a distillation chain and its generations
PREFIX-workerK-...                         worker K of a distributed run
PREFIX.lock                                held while a run writes"""
import json
import os
import re

LATEST = 1  # --ckpt 3 keeps the latest weights as checkpoint 1
_OWN = (r"symbol\.json|\d{4}\.params|state\.json|state-\d{8}(?:-optimizer|-fc7)?\.params|state-\d{8}\.states|"
        r"config\.py|log\.jsonl|lineage\.json")


class RunFiles:
    """The files of the run at ``prefix``."""

    def __init__(self, prefix):
        self.prefix = os.fspath(prefix)

    def __str__(self):
        return self.prefix

    def __repr__(self):
        return f"RunFiles({self.prefix!r})"

    # -- checkpoints (InsightFace's layout, `vargface.symbols.checkpoint.checkpoint_files`) --------------------
    @property
    def symbol(self):
        from vargface.symbols.checkpoint import checkpoint_files

        return checkpoint_files(self.prefix, 0)[0]

    def params(self, number):
        from vargface.symbols.checkpoint import checkpoint_files

        return checkpoint_files(self.prefix, int(number))[1]

    def model(self, number):
        """The ``--model PREFIX,EPOCH`` argument of checkpoint ``number``."""
        return f"{self.prefix},{int(number)}"

    @property
    def best(self):
        return RunFiles(self.prefix + "_best")

    def generation(self, number):
        return RunFiles(f"{self.prefix}-gen{int(number)}")

    def worker(self, rank):
        return RunFiles(f"{self.prefix}-worker{int(rank)}")

    # -- the run's own records ---------------------------------------------------------------------------------
    @property
    def state(self):
        return f"{self.prefix}-state.json"

    def state_params(self, step):
        return f"{self.prefix}-state-{int(step):08d}.params"

    def state_optimizer(self, step):
        return f"{self.prefix}-state-{int(step):08d}-optimizer.params"

    def state_fc7(self, step):
        """This worker's shards of a --fc-parallel classifier (`vargface.train.partial_fc.save_shards`)."""
        return f"{self.prefix}-state-{int(step):08d}-fc7.params"

    @property
    def config(self):
        return f"{self.prefix}-config.py"

    @property
    def log(self):
        return f"{self.prefix}-log.jsonl"

    @property
    def lineage(self):
        return f"{self.prefix}-lineage.json"

    @property
    def lock(self):
        from vargface.locks import lock_path

        return lock_path(self.prefix)

    def beside(self, name):
        """A file the state names, in the run's folder (a moved run folder still finds its files)."""
        return os.path.join(os.path.dirname(os.path.abspath(self.state)), os.path.basename(str(name)))

    # -- questions ---------------------------------------------------------------------------------------------
    def has_resumable_state(self):
        """True when a training state or a distillation chain's lineage is there for --resume to continue."""
        return os.path.exists(self.state) or os.path.exists(self.lineage)

    def final_checkpoint(self):
        """``PREFIX,N`` of the last checkpoint the state records, or None."""
        try:
            with open(self.state) as f:
                number = json.load(f).get("last_checkpoint")
        except (OSError, ValueError, AttributeError):
            return None
        return self.model(number) if isinstance(number, int) else None

    def state_arrays(self):
        """The state's array files that exist (the current state's, and older ones not yet removed)."""
        pattern = re.compile(re.escape(os.path.basename(self.prefix)) + r"-state-\d{8}(?:-optimizer\.params|"
                             r"-fc7\.params|\.params|\.states)$")
        return self._matching(pattern)

    def existing(self):
        """Every file of this run that exists: the prefix's own, its best checkpoint's and its generations' (the
        lock is not among them; each worker of a distributed run owns its PREFIX-workerK files)."""
        return self._matching(re.compile(re.escape(os.path.basename(self.prefix)) + r"(?:_best|-gen\d+)*-(?:" + _OWN
                                         + ")$"))

    def _matching(self, pattern):
        try:
            names = sorted(os.listdir(os.path.dirname(os.path.abspath(self.prefix))))
        except FileNotFoundError:
            return []
        return [os.path.join(os.path.dirname(self.prefix), name) for name in names if pattern.match(name)]
