"""``vargface demo``: the whole VarGFaceNet method on synthetic faces, sized for two CPU cores.

Synthetic training identities and held-out identities -> RecordIO -> a ResNet-IR teacher clearly stronger than the
student -> a VarGFaceNet student from scratch -> recursive angular distillation (generations 1 and 2) and a control
trained as long as generation 2 without a teacher -> every model on the held-out identities (10-fold Accuracy-Flip
on a pair set, the exact TAR over all pairs of the held-out images and IJB-style template TAR at FAR 1e-4 on an
IJB-layout set of them) -> a table (Markdown + JSON) and a PNG.

It is one seed of `vargface experiment distill` (same steps, same report) without its ablations: a single seed
gives one paired difference per comparison and no interval, so the demo shows the method working end to end and
leaves claims about the size of the effect to the experiment. Every step runs the real ``vargface`` subcommand in
this process and prints it first, so any step can be rerun alone; rerunning the same demo continues after the last
finished step (an interrupted training continues with --resume, any other step is redone)."""
import argparse

from vargface.experiment import Experiment, add_options, settings_from_args


class Demo(Experiment):
    name, state_file = "demo", "demo-state.json"


def register(subparsers):
    p = subparsers.add_parser(
        "demo", help="the whole method (data, teacher, student, recursive distillation, evaluation) on synthetic "
                     "faces in about five minutes on two CPU cores",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, "demo")
    p.set_defaults(func=demo_command)


def demo_command(args):
    Demo(args.out, settings_from_args(args, "demo"), overwrite=args.overwrite, dry_run=args.dry_run).run()
    return 0
