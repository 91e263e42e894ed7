"""Run every benchmark script in turn: ``python -m bench.run_all [--quick] [--device cuda]``."""
import importlib
import sys

SCRIPTS = ("dec", "sinkhorn", "swav_loss", "contrastive", "prototype", "recon")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    for name in SCRIPTS:
        try:
            mod = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            print(f"skip bench.{name}: {exc}", file=sys.stderr)
            continue
        print(f"== bench.{name}", flush=True)
        from bench.common import main as run

        run(name, mod.cases, argv)


if __name__ == "__main__":
    main()
