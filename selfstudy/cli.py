"""The command line (`python main.py` or `selfstudy`): run a sweep of gin-configured trials with Ray Tune."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples (`selfstudy` is the same command as `python main.py` after `pip install -e .`):
  python main.py                                    quick offline run: ResNet-9 on digits
  python main.py -g cifar/r9/classify               gin config from config/ (.gin left out)
  python main.py -p 'init_resnet.choice = "resnet50"' 'dataloader.batch_size = 128'
  python main.py -e cifar_test_0000                 results under EXP_DIR/cifar_test_0000
  python main.py -r grid_search                     sweep of the Ray config config/grid_search.py
                                                    (on CIFAR-10: put its files first, see that module)
  python main.py -r hparam_search                   Optuna proposes, ASHA stops trials early
  python main.py -r headline -e headline            a study: pretraining, then transfer at label budgets
                                                    (render its data first: see config/headline.py)
  python main.py -l                                 in this process, no Ray workers (debugging)
  python main.py -p 'Wrapper.pretrained = "pretrain-rotate/xlg0010"'
  python main.py -p 'session.test_iters = -1'       also evaluate the test split
  python main.py -e my_sweep --resume               continue an interrupted experiment
  python main.py -e my_sweep --status               its trials so far, while it runs or after
"""

DESCRIPTION = "selfstudy's command line: run a sweep of gin-configured trials with Ray Tune."


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-e", "--exp_id", default="default", help="experiment name: results go to EXP_DIR/EXP_ID")
    parser.add_argument("-r", "--ray_config", default="single_run",
                        help="Ray config or study: a module of config/ (e.g. grid_search) or a path to a .py file")
    parser.add_argument("-g", "--gin_config", nargs="+", action="extend", default=[],
                        help="gin configs relative to config/ (or paths to .gin files), .gin optional (default: "
                             "digits/r9/classify); -g may be repeated")
    parser.add_argument("-p", "--gin_param", nargs="+", action="extend", default=[], metavar="BINDING",
                        help="gin bindings, e.g. 'dataloader.batch_size = 128'; -p may be repeated")
    parser.add_argument("-l", "--local_mode", action="store_true", help="run trials in this process, without Ray")
    parser.add_argument("-a", "--address", default=None, help="address of a running Ray cluster to join")
    parser.add_argument("-q", "--quiet", action="store_true", help="print a line per trial that ended, and the final results")
    parser.add_argument("-c", "--checkpoint_at_end", action="store_true", help="checkpoint every trial at its end")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted experiment EXP_ID; finished trials are not run again")
    parser.add_argument("--status", action="store_true",
                        help="print the table of experiment EXP_ID (running or ended), trials not started included, "
                             "and whether it still runs; starts nothing")
    args = parser.parse_args(argv)
    if args.status and args.resume:
        print("error: --status only prints, --resume runs: drop one of them", file=sys.stderr)
        sys.exit(2)
    return args


def main(argv: list[str] | None = None) -> int:
    """The command: its exit code is 0 (every trial completed), 1 (some failed, or the disk is
    full: said in one line), 2 (a mistake in the command or its configs, said in one line) or 130
    (interrupted by Ctrl-C or SIGTERM: --resume continues)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # after argparse, so that --help and a mistyped flag answer at once: these import torch and ray
    from selfstudy.cluster import stop_on_sigterm
    from selfstudy.config import first_line, portable_gin_name
    from selfstudy.durable import DiskFull, disk_full, disk_nearly_full, is_disk_error
    from selfstudy.errors import UserError
    from selfstudy.experiment import Request, run
    from selfstudy.folders import exp_dir
    from selfstudy.report import EXIT_INTERRUPTED, interrupted_hint, resume_command

    request = Request(exp_id=args.exp_id, ray_config=args.ray_config,
                      gin_config=[portable_gin_name(name) for name in args.gin_config],
                      gin_params=args.gin_param, local=args.local_mode, address=args.address, quiet=args.quiet,
                      checkpoint_at_end=args.checkpoint_at_end, resume=args.resume,
                      status=args.status)
    stop_on_sigterm()
    try:
        return run(request)
    except UserError as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        started = exp_dir(args.exp_id).is_dir()
        print(interrupted_hint(args.exp_id) if started else "interrupted before anything was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # a full disk, wherever it struck (our writes or Ray's): one line, exit 1
        where = exp_dir(args.exp_id)
        if not (is_disk_error(err) or disk_nearly_full(where)):
            raise
        full = err if isinstance(err, DiskFull) else disk_full(where, None, err if isinstance(err, OSError) else None)
        cause = "" if is_disk_error(err) else f" (it ended in {type(err).__name__}: {first_line(err)})"
        resume = f"; then continue with `{resume_command(args.exp_id)}`" if where.is_dir() else ""
        print(f"error: {full.strerror}{cause}{resume}", file=sys.stderr)
        return 1
