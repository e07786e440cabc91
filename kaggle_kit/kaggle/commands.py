"""The Kaggle-side CLI commands: kernel, wheels, dataset, model, data (argument setup + run, as in cli.py)."""

from __future__ import annotations

from pathlib import Path


def _kernel(args):
    from . import client, metadata

    if args.action == "build" and args.spec:
        from ..competitions import get

        name = get(args.spec).name
        out = metadata.build_for_spec(
            args.spec,
            args.out or f"runs/kernels/{name}",
            model_dir=args.model_dir or "/kaggle/input/MODEL",
            datasets=args.dataset or ["kagglekit/kaggle-kit-wheels"],
            models=args.model or [],
            accelerator=args.accelerator or "t4x2",
            kernel_id=args.id,
        )
        _built(out)
    elif args.action == "build":
        if not args.notebook_dir:
            from ..errors import ConfigError

            raise ConfigError("notebook_dir", "give a notebook folder (notebooks/lmsys) or --spec FILE")
        out = metadata.build(
            args.notebook_dir,
            args.out or f"runs/kernels/{args.notebook_dir.rstrip('/').split('/')[-1]}",
            competition=args.competition,
            datasets=args.dataset or [],
            models=args.model or [],
            accelerator=args.accelerator,
            kernel_id=args.id,
        )
        _built(out)
    elif args.action == "check":
        for path in args.paths:
            folder = path if not path.endswith(".json") else str(Path(path).parent)
            metadata.validate(metadata.read(path), folder, source=path)
            print(f"{path}: valid")
    elif args.action == "push":
        res = client.push(args.folder, args.timeout)
        print(f"pushed {res.ref} version {res.version}: {res.url}")
    elif args.action == "status":
        state, failure = client.status(args.kernel)
        print(f"{args.kernel}: {state}" + (f" ({failure})" if failure else ""))
        return 0 if state != "error" else 1
    elif args.action == "output":
        for f in client.output(args.kernel, args.to):
            print(f)
    elif args.action == "submit":
        print(client.submit(args.competition, args.kernel, args.version, args.file, args.message or ""))
    return 0


def _built(out) -> None:
    from . import metadata

    meta = metadata.read(out)
    print(
        f"{out}: {meta['id']} ({meta.get('machine_shape') or 'no GPU'}, internet "
        f"{'on' if meta.get('enable_internet', True) else 'off'}) ready to push"
    )


def _add_kernel(p):
    sub = p.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="a push-ready kernel folder with checked metadata")
    b.add_argument("notebook_dir", nargs="?", help="e.g. notebooks/lmsys (notebook + kernel-metadata.json)")
    b.add_argument("--spec", help="a competition spec of your own: a notebook is written for it")
    b.add_argument("--model-dir", help="with --spec: the model folder on Kaggle, e.g. /kaggle/input/gemma-2/...")
    b.add_argument("--out", help="default runs/kernels/<name>")
    b.add_argument("--id", help="user/slug (the title follows the slug)")
    b.add_argument("--competition", help="competition slug: added as source, internet off")
    b.add_argument("--dataset", action="append", help="dataset source owner/slug (repeatable)")
    b.add_argument("--model", action="append", help="model source owner/model/framework/variation/version")
    b.add_argument("--accelerator", choices=["t4x2", "p100", "none"])
    c = sub.add_parser("check", help="validate kernel-metadata.json files")
    c.add_argument("paths", nargs="+", help="kernel folders or kernel-metadata.json files")
    pu = sub.add_parser("push", help="push a built kernel folder (official kaggle client)")
    pu.add_argument("folder")
    pu.add_argument("--timeout", type=int, help="session timeout in seconds")
    for name, help_ in (("status", "latest run's status"), ("output", "download the latest run's output")):
        q = sub.add_parser(name, help=help_)
        q.add_argument("kernel", help="user/slug")
        if name == "output":
            q.add_argument("--to", default="runs/kernel_output", help="folder for the files")
    sm = sub.add_parser("submit", help="submit a kernel version to a code competition")
    sm.add_argument("kernel", help="user/slug")
    sm.add_argument("--competition", required=True)
    sm.add_argument("--version", type=int, help="kernel version (default: latest)")
    sm.add_argument("--file", default="submission.csv", help="the kernel's output file")
    sm.add_argument("--message")


def _wheels(args):
    from .wheels import build_wheels

    if args.with_ and not args.torch:
        from ..errors import ConfigError

        raise ConfigError("torch", "--with vllm needs the image's torch: print(torch.__version__) in a Kaggle notebook")
    out = build_wheels(args.out, python=args.python, user=args.user, vllm_torch=args.torch if args.with_ else None)
    print(f"{out}: {len(list(out.glob('*.whl')))} wheels; push with: kaggle-kit dataset push {out}")
    return 0


def _add_wheels(p):
    p.add_argument("--out", default="runs/kaggle-kit-wheels")
    p.add_argument("--python", default="3.11", help="the Kaggle image's Python (default 3.11)")
    p.add_argument("--user", default="kagglekit", help="Kaggle user owning the dataset")
    p.add_argument("--with", dest="with_", choices=["vllm"], help="add an optional engine (requirements-vllm.txt)")
    p.add_argument("--torch", help="with --with vllm: the Kaggle image's torch version, e.g. 2.6.0")


def _dataset(args):
    from . import client

    print(client.dataset_push(args.folder, args.message))
    return 0


def _add_dataset(p):
    sub = p.add_subparsers(dest="action", required=True)
    d = sub.add_parser("push", help="upload a dataset folder: a new version, or a new private dataset")
    d.add_argument("folder")
    d.add_argument("--message", default="kaggle-kit wheels")


def _model(args):
    from . import client

    print(client.model_push(args.folder, args.handle, args.message, args.license))
    return 0


def _add_model(p):
    sub = p.add_subparsers(dest="action", required=True)
    m = sub.add_parser("push", help="upload an adapter folder: a new version of a Kaggle Models variation")
    m.add_argument("folder", help="an adapter (or model) folder, e.g. runs/lmsys/final")
    m.add_argument("--handle", required=True, help="owner/model/framework/variation, e.g. me/lmsys/transformers/r16")
    m.add_argument("--message", default="", help="version notes")
    m.add_argument("--license", default="Apache 2.0", help="license of a new variation")


def _data(args):
    from . import client

    files = client.download(args.competition, args.to or f"data/{args.competition}")
    print(f"{len(files)} files: " + ", ".join(str(f) for f in files))
    return 0


def _add_data(p):
    sub = p.add_subparsers(dest="action", required=True)
    d = sub.add_parser("download", help="fetch and unzip a competition's files")
    d.add_argument("competition", help="competition slug, e.g. lmsys-chatbot-arena")
    d.add_argument("--to", help="default data/<slug>")
