"""Device lists from the command line: ``gpu:0,1,2,3``, ``cpu:0,cpu:1``, ``cpu`` -> a list of ``mx.Context``."""
import re

from vargface.errors import VargfaceError

_ITEM = re.compile(r"^(?:(cpu|gpu):)?(\d+)$|^(cpu|gpu)$")


def device_specs(text, option="--ctx"):
    """``[(kind, index), ...]`` of a device list (``cpu`` or ``gpu``), checked for syntax only: no MXNet needed."""
    specs, kind = [], None
    for item in str(text).replace(" ", "").split(","):
        match = _ITEM.match(item)
        if not match:
            raise VargfaceError(f"{option}: cannot parse {item!r}; expected e.g. 'gpu:0,1,2,3', 'cpu:0,cpu:1' or 'cpu'")
        if match.group(3):
            kind, index = match.group(3), 0
        else:
            kind = match.group(1) or kind
            if kind is None:
                raise VargfaceError(f"{option}: {item!r} has no device type; write 'gpu:{item}' or 'cpu:{item}'")
            index = int(match.group(2))
        specs.append((kind, index))
    if len(set(specs)) != len(specs):
        raise VargfaceError(f"{option}: {text!r} lists a device twice")
    return specs


def parse_ctx(text, option="--ctx"):
    """Parse a context list; a GPU that does not exist is an error that says how many there are.

    The one device parser: None means ``cpu``, and an ``mx.Context`` or a list of them is checked the same way."""
    import mxnet as mx

    if text is None:
        text = "cpu"
    if isinstance(text, mx.Context) or isinstance(text, (list, tuple)):
        contexts = [text] if isinstance(text, mx.Context) else list(text)
        if not contexts or not all(isinstance(c, mx.Context) for c in contexts):
            raise VargfaceError(f"{option}: expected a device list such as 'cpu:0,cpu:1', got {text!r}")
        text = ",".join(f"{c.device_type}:{c.device_id}" for c in contexts)
    contexts = [mx.gpu(index) if kind == "gpu" else mx.cpu(index) for kind, index in device_specs(text, option)]
    gpus = [c.device_id for c in contexts if c.device_type == "gpu"]
    if gpus:
        available = mx.context.num_gpus()
        missing = [i for i in gpus if i >= available]
        if missing:
            raise VargfaceError(f"{option}: gpu {missing[0]} does not exist; this machine has {available} GPU(s)"
                                + ("" if available else " (use --ctx cpu, or install mxnet-cu112 on a GPU machine)"))
    return contexts
