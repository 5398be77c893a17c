"""Train the teachers of a capacity-gap/early-stopping profile into the model cache, and nothing
else: to train them on another machine (a lent GPU) and carry the cache entries back, where the
studies find them (their cache keys name what decides the weights, not the machine; the meta
and the rows say where each trained: ``trained_on``).

    python -m studies.zoo_teachers --profile large --seeds 0:3 --archs resnet32 resnet20 \\
        --device cuda --precision bf16

The precision is part of the key: give the one the reading machine's studies train in (a CPU
study's ``auto`` writes the precision it measured into the key; ``python -m
kd.experiment.cache list`` shows the keys' precisions).
"""

from __future__ import annotations

import argparse

from kd.experiment.cli import run_main, seed_selection
from kd.experiment.command import OneLineErrorParser, with_training
from kd.experiment.results import seed_range
from kd.train.engine import resolve_device
from studies import capacity_gap, early_stopping
from studies.cifar_zoo import CIFAR_DATASETS, ZOO_PROFILES, make_zoo


def teachers_of(profile: str) -> list[str]:
    """Every teacher architecture the two studies ask for in ``profile``, in order."""
    families = (*capacity_gap.FAMILIES[profile], *early_stopping.FAMILIES[profile])
    return list(dict.fromkeys(t for f in families for t in f.teachers))


def main(argv: list[str] | None = None) -> None:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--profile", choices=list(ZOO_PROFILES), default="large")
    parser.add_argument("--seeds", type=seed_selection, default=None,
                        help="N or A:B, as a study's (default: the profile's)")
    parser.add_argument("--archs", nargs="+", default=None,
                        help="teacher architectures, trained in this order for each seed "
                             "(default: every teacher of the profile)")
    parser.add_argument("--dataset", choices=CIFAR_DATASETS, default=CIFAR_DATASETS[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16"], required=True,
                        help="that of the studies that will read them (part of the key)")
    args = parser.parse_args(argv)
    archs = args.archs or teachers_of(args.profile)
    unknown = sorted(set(archs) - set(teachers_of(args.profile)))
    if unknown:
        parser.error(f"not a teacher of profile {args.profile}: {', '.join(unknown)}")
    profile = with_training(ZOO_PROFILES[args.profile].resolved(), precision=args.precision)
    device = resolve_device(args.device)
    zoo = make_zoo(profile, args.dataset, device)
    for seed in seed_range(args.seeds or profile.seeds):
        for arch in archs:
            teacher, meta, _ = zoo.teacher(arch, seed)
            print(f"teacher {arch} seed {zoo.teacher_seed_for(seed)}: {teacher.key}, test "
                  f"accuracy {zoo.accuracy(teacher):.4f}, {meta.get('train_s')} s on "
                  f"{meta.get('trained_on', 'an unnamed machine')}", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
