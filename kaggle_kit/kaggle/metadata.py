"""kernel-metadata.json: check it before anything is pushed, and build push-ready kernel folders.

The traps this catches are the ones competitors hit: a title whose slug differs from the id's slug (the
push lands under another name), a GPU kernel without `machine_shape: NvidiaTeslaT4` (pushes without it
have landed on a P100), internet left on in a code competition (the submission is refused), `code/` or
URL prefixes copied from a pulled kernel or a browser, and model sources that are not
owner/model/framework/variation/version.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from ..errors import ConfigError
from .secrets import publish

log = logging.getLogger("kaggle_kit")

METADATA = "kernel-metadata.json"
# --accelerator -> (enable_gpu, machine_shape)
ACCELERATORS = {
    "t4x2": (True, "NvidiaTeslaT4"),  # two T4s, 15 GB each: the kit's default for 7-9B 4-bit models
    "p100": (True, "NvidiaTeslaP100"),
    "none": (False, None),
}
MACHINE_SHAPES = {"NvidiaTeslaT4", "NvidiaTeslaP100", "NvidiaL4", "NvidiaL4X1", "NvidiaH100", "Tpu1VmV38"}
NAME = r"[A-Za-z0-9][A-Za-z0-9_-]*"
SLUG = r"[a-z0-9]+(?:-[a-z0-9]+)*"
PATTERNS = {
    "id": re.compile(rf"^{NAME}/{SLUG}$"),
    "dataset_sources": re.compile(rf"^{NAME}/[A-Za-z0-9-]+$"),
    "kernel_sources": re.compile(rf"^{NAME}/[A-Za-z0-9-]+$"),
    "competition_sources": re.compile(r"^[a-z0-9-]+$"),
    "model_sources": re.compile(rf"^{NAME}/[A-Za-z0-9_.-]+/[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+/\d+$"),
}
SOURCE_FIELDS = ("dataset_sources", "kernel_sources", "competition_sources", "model_sources")
URL_PREFIXES = ("https://www.kaggle.com/", "https://kaggle.com/", "www.kaggle.com/", "kaggle.com/")
KIND_PREFIXES = {
    "id": ("code/",),
    "kernel_sources": ("code/",),
    "dataset_sources": ("datasets/",),
    "competition_sources": ("competitions/", "c/"),
    "model_sources": ("models/",),
}


def slugify(title: str) -> str:
    """The slug Kaggle derives from a title (the official client's rule: python-slugify)."""
    from slugify import slugify as _slugify

    return _slugify(title)


def normalise(meta: dict) -> dict:
    """A copy with browser-URL and `code/`-style prefixes stripped from the id and sources (logged)."""
    meta = dict(meta)
    for field, kinds in KIND_PREFIXES.items():
        values = meta.get(field)
        if values is None:
            continue
        items = [values] if field == "id" else list(values)
        fixed = []
        for v in items:
            new = v.strip() if isinstance(v, str) else v
            if isinstance(new, str):
                for prefix in URL_PREFIXES + kinds:
                    if new.startswith(prefix):
                        new = new[len(prefix) :]
                new = new.rstrip("/")
                if new != v:
                    log.info("%s: %r -> %r (prefix removed)", field, v, new)
            fixed.append(new)
        meta[field] = fixed[0] if field == "id" else fixed
    return meta


def check(meta: dict, folder: str | Path | None = None) -> list[str]:
    """Every problem of a kernel metadata dict as 'field: what is wrong; what would be valid'."""
    problems = []
    kid = meta.get("id")
    if not isinstance(kid, str) or not PATTERNS["id"].match(kid):
        problems.append(f"id: {kid!r} is not 'user/slug' (slug: lowercase letters, digits, hyphens)")
        kid = None
    elif not 5 <= len(kid.split("/")[1]) <= 50:
        problems.append(f"id: slug {kid.split('/')[1]!r} must be 5-50 characters")
    title = meta.get("title")
    if not isinstance(title, str) or len(title) < 5:
        problems.append(f"title: {title!r} must be a string of at least 5 characters")
    elif kid and slugify(title) != kid.split("/")[1]:
        problems.append(
            f"title: {title!r} becomes slug {slugify(title)!r}, not the id's {kid.split('/')[1]!r}; "
            f"Kaggle would push under the title's slug. Use a title like {kid.split('/')[1].replace('-', ' ')!r}"
        )
    code = meta.get("code_file")
    if not code:
        problems.append("code_file: missing (the notebook or script file in this folder)")
    elif folder is not None and not (Path(folder) / code).is_file():
        problems.append(f"code_file: {code!r} does not exist in {folder}")
    if meta.get("language", "python") != "python":
        problems.append(f"language: {meta.get('language')!r}; the kit's kernels are 'python'")
    if meta.get("kernel_type") not in ("notebook", "script"):
        problems.append(f"kernel_type: {meta.get('kernel_type')!r} is not 'notebook' or 'script'")
    for flag in ("enable_gpu", "enable_internet", "is_private", "enable_tpu"):
        if flag in meta and not isinstance(meta[flag], bool):
            problems.append(f"{flag}: {meta[flag]!r} must be true or false")
    problems += _check_accelerator(meta)
    if meta.get("competition_sources") and meta.get("enable_internet", True) is not False:
        problems.append("enable_internet: must be false for a code competition (competition_sources is set)")
    for field in SOURCE_FIELDS:
        values = meta.get(field, [])
        if not isinstance(values, list):
            problems.append(f"{field}: must be a list, got {values!r}")
            continue
        for v in values:
            if not isinstance(v, str) or not PATTERNS[field].match(v):
                problems.append(f"{field}: {v!r} is not {_FORMATS[field]}")
    return problems


_FORMATS = {
    "dataset_sources": "'owner/dataset-slug'",
    "kernel_sources": "'owner/kernel-slug'",
    "competition_sources": "a competition slug such as 'lmsys-chatbot-arena'",
    "model_sources": "'owner/model/framework/variation/version' (version a number), "
    "e.g. 'google/gemma-2/transformers/gemma-2-9b-it/2'",
}


def _check_accelerator(meta: dict) -> list[str]:
    shape, gpu = meta.get("machine_shape"), meta.get("enable_gpu", False)
    if shape is not None and shape not in MACHINE_SHAPES:
        return [f"machine_shape: {shape!r} is not one of {sorted(MACHINE_SHAPES)}"]
    if gpu and shape is None:
        return [
            "machine_shape: missing with enable_gpu true; set 'NvidiaTeslaT4' for T4 x2 "
            "(pushes without it have landed on a P100) or 'NvidiaTeslaP100'"
        ]
    if shape and shape.startswith("Nvidia") and not gpu:
        return [f"enable_gpu: false but machine_shape is {shape!r}; set enable_gpu true"]
    return []


def read(folder: str | Path) -> dict:
    """The kernel-metadata.json of a folder (or the file itself), as a dict."""
    path = Path(folder)
    path = path / METADATA if path.is_dir() else path
    if not path.is_file():
        raise ConfigError("kernel-metadata.json", f"{path} not found")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError("kernel-metadata.json", f"{path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ConfigError("kernel-metadata.json", f"{path} must hold a JSON object")
    return meta


def validate(meta: dict, folder: str | Path | None = None, source: str = METADATA) -> dict:
    """`meta` if it has no problems; else ConfigError naming the first field, listing every problem."""
    problems = check(meta, folder)
    if problems:
        field = problems[0].split(":", 1)[0]
        raise ConfigError(field, f"{source} has {len(problems)} problem(s): " + " | ".join(problems))
    return meta


def build(
    notebook_dir: str | Path,
    out: str | Path,
    *,
    competition: str | None = None,
    datasets: list[str] = (),
    models: list[str] = (),
    accelerator: str | None = None,
    kernel_id: str | None = None,
) -> Path:
    """A push-ready folder: the code file with outputs cleared and a checked kernel-metadata.json.

    Flags add to or replace the metadata in `notebook_dir`: `competition` (a slug: competition_sources,
    internet off), `datasets` / `models` (appended sources), `accelerator` (t4x2 | p100 | none),
    `kernel_id` ('user/slug'; the title follows the slug).
    """
    src = Path(notebook_dir)
    meta = normalise(read(src))
    if kernel_id:
        meta["id"] = kernel_id
        meta["title"] = kernel_id.split("/", 1)[1].replace("-", " ")
    if competition:
        meta["competition_sources"] = [competition]
        meta["enable_internet"] = False
    for field, extra in (("dataset_sources", datasets), ("model_sources", models)):
        meta[field] = list(dict.fromkeys([*meta.get(field, []), *extra]))
    if accelerator is not None:
        if accelerator not in ACCELERATORS:
            raise ConfigError("accelerator", f"{accelerator!r} is not one of {list(ACCELERATORS)}")
        gpu, shape = ACCELERATORS[accelerator]
        meta["enable_gpu"] = gpu
        meta.pop("machine_shape", None)
        if shape:
            meta["machine_shape"] = shape
    meta = with_notebook_sources(meta, src / meta.get("code_file", ""))
    meta = normalise(meta)
    validate(meta, src)
    unprovided = unprovided_inputs(src / meta["code_file"], meta)
    if unprovided:
        raise ConfigError(
            "dataset_sources",
            f"{src / meta['code_file']} reads {unprovided[0]} but no source of the kernel provides it; add one "
            "(--dataset owner/slug, --model owner/model/framework/variation/version) or remove the path",
        )
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    code = src / meta["code_file"]
    if code.suffix == ".ipynb":
        (tmp / code.name).write_text(json.dumps(_clear_outputs(json.loads(code.read_text())), indent=1) + "\n")
    else:
        shutil.copy2(code, tmp / code.name)
    meta["code_file"] = code.name
    (tmp / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
    return publish(tmp, out)


def notebook_constants(code_file: Path) -> dict:
    """The top-level `NAME = "text"` constants of a notebook's (or script's) code."""
    import ast

    consts = {}
    for source in _code(code_file):
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                consts.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return consts


def with_notebook_sources(meta: dict, code_file: Path) -> dict:
    """`meta` with the Kaggle handles the notebook's constants name added as sources: a model handle
    (owner/model/framework/variation/version) to model_sources, a dataset handle (owner/slug[/file]) to
    dataset_sources. What the code reads, the metadata carries."""
    from ..env import handle_kind

    meta = dict(meta)
    for value in notebook_constants(code_file).values():
        kind = handle_kind(value)
        if kind == "model":
            meta["model_sources"] = list(dict.fromkeys([*meta.get("model_sources", []), value]))
        elif kind == "dataset":
            handle = "/".join(value.split("/")[:2])
            meta["dataset_sources"] = list(dict.fromkeys([*meta.get("dataset_sources", []), handle]))
    return meta


def unprovided_inputs(code_file: Path, meta: dict) -> list[str]:
    """The /kaggle/input/... paths written in the code whose folder no source of `meta` mounts."""
    import re

    mounted = set(meta.get("competition_sources", []))
    mounted |= {s.split("/")[1] for s in meta.get("dataset_sources", []) + meta.get("kernel_sources", [])}
    mounted |= {s.split("/")[1] for s in meta.get("model_sources", [])}
    found = []
    for source in _code(code_file):
        for path in re.findall(r"/kaggle/input/([A-Za-z0-9_.-]+)", source):
            if path not in mounted:
                found.append(f"/kaggle/input/{path}")
    return list(dict.fromkeys(found))


def _code(code_file: Path) -> list[str]:
    """The code of a notebook's cells (or a script's text)."""
    code_file = Path(code_file)
    if not code_file.is_file():
        return []
    if code_file.suffix != ".ipynb":
        return [code_file.read_text()]
    nb = json.loads(code_file.read_text())
    return ["".join(c.get("source", "")) for c in nb.get("cells", []) if c.get("cell_type") == "code"]


def _clear_outputs(nb: dict) -> dict:
    """A notebook without outputs or execution counts: nothing from a local run travels to Kaggle."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return nb


def build_for_spec(
    spec_path: str | Path,
    out: str | Path,
    *,
    model_dir: str = "/kaggle/input/MODEL",
    datasets: list[str] = ("kagglekit/kaggle-kit-wheels",),
    models: list[str] = (),
    accelerator: str = "t4x2",
    kernel_id: str | None = None,
) -> Path:
    """A push-ready kernel folder for a competition spec of your own: a thin notebook that carries the
    spec (and the prepare/fields file it names) in its first cells, since a kernel is one code file, then
    predicts with it; kernel-metadata.json names the competition (internet off) and the sources."""
    import nbformat

    from ..competitions import get

    spec = get(spec_path).spec
    if not spec.slug:
        raise ConfigError("slug", f"{spec_path}: a kernel needs the competition's Kaggle slug in the spec")
    files = {"competition.yaml": Path(spec_path).read_text(encoding="utf-8")}
    for hook in {h.split(":")[0] for h in (spec.prepare, spec.fields) if h}:
        files[hook] = (spec.folder / hook).read_text(encoding="utf-8")
    writes = "\n".join(f"(SPEC_DIR / {name!r}).write_text({text!r})" for name, text in files.items())
    cells = [
        nbformat.v4.new_markdown_cell(f"# kaggle-kit: {spec.name}\n{spec.description or spec.metric}"),
        nbformat.v4.new_code_cell(_INSTALL),
        nbformat.v4.new_code_cell(
            "# The competition spec this kernel runs (written by `kaggle-kit kernel build --spec`).\n"
            "from pathlib import Path\nSPEC_DIR = Path('spec')\nSPEC_DIR.mkdir(exist_ok=True)\n" + writes
        ),
        nbformat.v4.new_code_cell(
            "from kaggle_kit import predict, predict_config\n"
            f"MODEL_DIR = {model_dir!r}\n"
            "cfg = predict_config(str(SPEC_DIR / 'competition.yaml'), kaggle_model=MODEL_DIR, local_model='demo',\n"
            "                         budget='8h30m', progress=False)\nresult = predict(cfg)\nresult"
        ),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    src = Path(out).with_name(f".{Path(out).name}.src")
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    code = f"{spec.name}.ipynb"
    nbformat.write(nb, src / code)
    kid = kernel_id or f"kagglekit/kaggle-kit-{spec.name.replace('_', '-')}"
    meta = {
        "id": kid, "title": kid.split("/", 1)[1].replace("-", " "), "code_file": code, "language": "python",
        "kernel_type": "notebook", "is_private": True, "enable_internet": False,
        "dataset_sources": list(datasets), "competition_sources": [spec.slug], "kernel_sources": [],
        "model_sources": list(models),
    }  # fmt: skip
    (src / METADATA).write_text(json.dumps(meta, indent=2) + "\n")
    try:
        return build(src, out, accelerator=accelerator)
    finally:
        shutil.rmtree(src, ignore_errors=True)


_INSTALL = (
    "# Offline install on Kaggle from the wheels dataset (`kaggle-kit wheels`); does nothing elsewhere.\n"
    "import os, subprocess, sys\n"
    'WHEELS = "/kaggle/input/kaggle-kit-wheels"\n'
    "if os.path.isdir(WHEELS):\n"
    '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", WHEELS,\n'
    '                    "-r", os.path.join(WHEELS, "requirements.txt")], check=True)'
)
