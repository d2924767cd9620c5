"""``lifelong memory create | list | status | snapshot | delete``: named memories on a cluster.

Connects to the running Ray cluster (``--address``, else ``$RAY_ADDRESS``, else a local one
started with ``ray start --head``), e.g.::

    lifelong memory create omniglot-life --slots 1048576 --key-dim 128 --values 100000 --shards 2
    lifelong memory status omniglot-life
    lifelong memory snapshot omniglot-life
    lifelong memory delete omniglot-life --yes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from ray.exceptions import RayError

from lifelong.distributed import registry
from lifelong.distributed.spec import MemorySpec
from lifelong.errors import LifelongError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifelong memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default=None,
                        help="parent location of memories: a path or pyarrow filesystem URI "
                             f"(default: $LIFELONG_MEMORY_STORAGE or {registry.default_storage()})")
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "auto"),
                        help="Ray cluster address (default: $RAY_ADDRESS, else auto: the "
                             "cluster started on this machine with `ray start --head`)")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a named memory and start its shards")
    create.add_argument("name")
    create.add_argument("--slots", type=int, required=True, help="N, slots in all")
    create.add_argument("--key-dim", type=int, required=True, help="d, the key size")
    create.add_argument("--values", type=int, required=True, help="value vocabulary size")
    create.add_argument("--shards", type=int, default=2, help="shard actors (default 2)")
    create.add_argument("--choose-k", type=int, default=256)
    create.add_argument("--alpha", type=float, default=0.1)
    create.add_argument("--age-noise", type=float, default=8.0)
    create.add_argument("--snapshot-every", type=int, default=1000,
                        help="updates between a shard's snapshots (default 1000)")
    create.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per shard actor")
    create.add_argument("--num-gpus", type=float, default=None,
                        help="GPUs per shard actor (default: 1 if the cluster has GPUs)")
    create.add_argument("--placement", choices=["spread", "pack"], default="spread")
    create.add_argument("--search", choices=["exact", "ivf"], default="exact",
                        help="exact, or ivf: an approximate inverted file per shard")
    create.add_argument("--nlist", type=int, default=1024, help="IVF cells per shard")
    create.add_argument("--nprobe", type=int, default=8, help="IVF cells searched per query")
    sub.add_parser("list", help="names of the memories at the storage location")
    for name, text in (("status", "per-shard occupancy, oldest age, queries and writes"),
                       ("snapshot", "snapshot every shard now")):
        p = sub.add_parser(name, help=text)
        p.add_argument("name")
        p.add_argument("--json", action="store_true", help="print JSON")
    delete = sub.add_parser("delete", help="stop the shards and delete the memory's files")
    delete.add_argument("name")
    delete.add_argument("--yes", action="store_true", help="do not ask")
    return parser


def _print_status(name: str, status: list[dict]) -> None:
    cols = ["shard", "slots", "occupied", "oldest_age", "clock", "queries", "inserts",
            "refreshes", "replayed", "generation", "torn_frames", "device", "pid"]
    print(f"memory {name}: {sum(s['occupied'] for s in status)} of "
          f"{sum(s['slots'] for s in status)} slots filled")
    print("  ".join(f"{c:>10}" for c in cols))
    for s in status:
        print("  ".join(f"{str(s.get(c, '')):>10}" for c in cols))
    for s in status:
        if s.get("snapshot_error"):  # every update is still in the log: nothing is lost
            print(f"shard {s['shard']}: {s['snapshot_failures']} snapshot(s) failed, last: "
                  f"{s['snapshot_error']}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    storage = args.storage or registry.default_storage()
    if "://" not in storage:  # shard actors run in other directories
        storage = os.path.abspath(storage)
    try:
        if args.command == "create":
            spec = MemorySpec(name=args.name, key_dim=args.key_dim, num_slots=args.slots,
                              num_values=args.values, shards=args.shards, storage=storage,
                              choose_k=args.choose_k, alpha=args.alpha,
                              age_noise=args.age_noise, snapshot_every=args.snapshot_every,
                              num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                              placement=args.placement, search=args.search,
                              nlist=args.nlist, nprobe=args.nprobe)
            memory = registry.create_memory(spec, address=args.address)
            _print_status(args.name, memory.status())
        elif args.command == "list":
            for name in registry.list_memories(storage):
                print(name)
        elif args.command in ("status", "snapshot"):
            memory = registry.attach(args.name, storage, address=args.address)
            if args.command == "snapshot":
                gens = memory.shards.call("snapshot", [()] * memory.spec.shards)
                print(f"snapshot of {args.name}: generations {gens}")
            status = memory.status()
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                _print_status(args.name, status)
        elif args.command == "delete":
            if not args.yes and input(f"delete memory {args.name!r} and its files? [y/N] ") \
                    .strip().lower() != "y":
                return 1
            registry.delete_memory(args.name, storage, address=args.address)
            print(f"deleted {args.name}")
    except (LifelongError, OSError, RayError) as exc:
        # One line, no traceback: the message names the file or the setting at fault.
        message = " ".join(str(exc).split())
        print(f"error: {type(exc).__name__}: {message}", file=sys.stderr)
        return 2
    return 0
