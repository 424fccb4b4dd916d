"""One dist_sync worker of tests/test_train_dist.py running `fit` itself, so that a plugin can make the loss of this
worker alone NaN: the settings come as JSON on the command line; NAN_AT=N in the environment makes the extra loss
of the N-th batch log(0) = -inf (test_train_fit's NanAt). Prints 'finished' or 'error: MESSAGE' (exit 1), as the
CLI would."""
import json
import os
import sys

from test_train_fit import NanAt  # this script's folder, tests/, is first on sys.path

from vargface.errors import VargfaceError
from vargface.train.config import generate_config
from vargface.train.trainer import fit


def main(settings):
    network, dataset, loss = settings.pop("network"), settings.pop("dataset"), settings.pop("loss")
    try:
        bad = int(os.environ.get("NAN_AT", 0))
        fit(generate_config(network, dataset, loss, **settings), plugin=NanAt({bad} if bad else set()))
    except VargfaceError as error:
        print(f"error: {error}", flush=True)
        sys.exit(1)
    print("finished", flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
