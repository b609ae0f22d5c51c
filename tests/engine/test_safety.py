"""Safety (issue 7, "Reliability"): restricted checkpoint unpickling, no remote code, no network.

* Checkpoints: every Lightning subcommand of ``textseg`` defaults ``--weights_only`` to ``True``; the checkpoint of a
  tiny ``textseg fit`` of each method loads with ``torch.load(weights_only=True)`` and
  ``Module.load_from_checkpoint(weights_only=True)``, and ``--test_after_fit`` / ``textseg test --ckpt_path`` read it
  with ``weights_only=True``.
* Text encoders: no ``from_pretrained`` receives ``trust_remote_code=True``; a directory whose config asks for remote
  code (``auto_map``, a custom ``model_type``, Python files beside the weights) is loaded as a plain BERT without
  running any of it, and a hub id downloads no ``.py`` file.
* Network: ``import textseg`` and the (shortened) demo run with every socket connection and name lookup refused by a
  ``sitecustomize`` guard, with ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` / ``HF_DATASETS_OFFLINE`` unset; the
  import also runs in an empty network namespace (``unshare -rn``) where the machine allows it.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
import yaml
from torch import Tensor

from textseg.cli.lightning import TextSegCLI, run_lightning_cli
from textseg.cli.main import main
from textseg.methods import SemiMedRefModule, SupervisedModule, TextSegModule
from textseg.methods.textmoe import TextMoEModule
from textseg.models.encoders import TINY_TEXT_VOCAB, TextEncoder, build_vision_encoder

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
#: Environment variables that would make Hugging Face libraries offline; the network tests run without them.
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
#: Subcommands whose ``--weights_only`` must default to True.
SUBCOMMANDS = ("fit", "validate", "test", "predict")
#: Limit (s) of one subprocess: a hang (e.g. a blocking connection attempt) fails instead of stalling CI.
SUBPROCESS_TIMEOUT = 240

# ----------------------------------------------------------------------------------------------------------------
# 1. no network: the socket guard and the background runs (imports, demo)
# ----------------------------------------------------------------------------------------------------------------

#: ``sitecustomize.py`` of the guarded subprocesses (imported by ``site`` at start-up, before any user code).
GUARD_SOURCE = '''\
"""Network guard of tests/test_safety.py: record and refuse every non-AF_UNIX connection and every name lookup."""
import os
import socket
import traceback

_LOG = os.environ.get("TEXTSEG_NETGUARD_LOG", "")
_ARMED = os.environ.get("TEXTSEG_NETGUARD_ARMED", "")
if _ARMED:
    with open(_ARMED, "a") as _handle:
        _handle.write(f"{os.getpid()}\\n")


def _deny(what, detail):
    if _LOG:
        with open(_LOG, "a") as handle:
            handle.write(f"{what} {detail!r} pid={os.getpid()}\\n{''.join(traceback.format_stack(limit=25))}----\\n")
    raise OSError(f"network denied by test: {what} {detail!r}")


_connect, _connect_ex, _sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto


def connect(self, address):
    if self.family == socket.AF_UNIX:
        return _connect(self, address)
    _deny("connect", address)


def connect_ex(self, address):
    if self.family == socket.AF_UNIX:
        return _connect_ex(self, address)
    _deny("connect_ex", address)


def sendto(self, *args):
    if self.family == socket.AF_UNIX:
        return _sendto(self, *args)
    _deny("sendto", args[-1])


def create_connection(address, *args, **kwargs):
    _deny("create_connection", address)


def getaddrinfo(host, port, *args, **kwargs):
    _deny("getaddrinfo", (host, port))


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.socket.sendto = sendto
socket.create_connection = create_connection
socket.getaddrinfo = getaddrinfo
'''


class _Guard:
    """Files and environment of one network-denied subprocess (run in the repository root)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.site = root / "site"
        self.site.mkdir(exist_ok=True)
        (self.site / "sitecustomize.py").write_text(GUARD_SOURCE)
        self.log = root / "attempts.log"
        self.armed = root / "armed.pids"
        self.log.write_text("")
        self.armed.write_text("")
        self.process: subprocess.Popen[bytes] | None = None

    def env(self, guarded: bool = True) -> dict[str, str]:
        """The test process's environment without the offline switches, with the guard first on PYTHONPATH."""
        env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
        env["OMP_NUM_THREADS"] = "1"
        if guarded:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.site), env.get("PYTHONPATH", "")) if p)
            env["TEXTSEG_NETGUARD_LOG"] = str(self.log)
            env["TEXTSEG_NETGUARD_ARMED"] = str(self.armed)
        return env

    def start(self, argv: list[str], guarded: bool = True) -> _Guard:
        """Start ``argv`` in the background; stdout / stderr go to files (no pipe can fill up and block it)."""
        with (self.root / "stdout.txt").open("wb") as out, (self.root / "stderr.txt").open("wb") as err:
            self.process = subprocess.Popen(argv, cwd=REPO, env=self.env(guarded), stdout=out, stderr=err)
        return self

    def wait(self) -> tuple[int, str, str]:
        """Wait for the process; return its exit code, stdout and stderr."""
        assert self.process is not None
        code = self.process.wait(timeout=SUBPROCESS_TIMEOUT)
        out, err = ((self.root / name).read_text(errors="replace") for name in ("stdout.txt", "stderr.txt"))
        return code, out, err

    def stop(self) -> None:
        """Kill the process if it still runs (a failed or interrupted test)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def attempts(self) -> str:
        return self.log.read_text()

    def assert_clean(self) -> str:
        """Assert exit code 0, a loaded guard and no network attempt; return stdout."""
        code, out, err = self.wait()
        assert code == 0, err[-4000:]
        assert self.armed.read_text().strip(), "the network guard was not loaded in the subprocess"
        assert self.attempts() == "", f"network access attempted:\n{self.attempts()}"
        return out


#: The modules ``import`` must load without touching the network.
IMPORTS = (
    "import textseg, textseg.cli.main, textseg.cli.lightning, textseg.engine.wandb, textseg.engine.overlays, "
    "textseg.engine.predictions, textseg.engine.runcard, textseg.models.encoders"
)
#: The demo, shortened: one epoch of two batches on a small generated synthetic set, then the test of the best
#: checkpoint. The packaged MiniLM text encoder of the demo config is kept.
DEMO = [
    "-m", "textseg", "fit",
    "--config", "configs/demo_semimedref.yaml",
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "2",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1",
    "--trainer.enable_progress_bar", "false",
    "--test_after_fit", "true",
    "--data.dataset_options", "{synthetic: {n_train: 32, n_val: 8, n_test: 8, image_size: 64}}",
]  # fmt: skip


def _unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture(scope="module")
def background(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, _Guard]]:
    """Start the import checks and the demo at once; they run while the in-process tests below run.

    Keys: ``"import"`` (imports under the socket guard), ``"netns"`` (imports under ``unshare -rn``, absent where
    user + network namespaces are not available) and ``"demo"`` (the shortened demo under the socket guard, writing
    ``run/``). Whatever still runs at the end of the module is killed.
    """
    root = tmp_path_factory.mktemp("network")
    runs = {"import": _Guard(root / "import").start([sys.executable, "-c", IMPORTS])}
    if _unshare_available():
        code = (
            "import socket\n"
            "names = sorted(name for _, name in socket.if_nameindex())\n"
            "assert names == ['lo'], f'not an empty network namespace: {names}'\n"
            f"{IMPORTS}\n"
            "print('imported')\n"
        )
        runs["netns"] = _Guard(root / "netns").start(["unshare", "-rn", sys.executable, "-c", code], guarded=False)
    demo = [sys.executable, *DEMO, "--data.root", str(root / "synthetic"), "--run_dir", str(root / "run")]
    runs["demo"] = _Guard(root / "demo").start(demo)
    yield runs
    for run in runs.values():
        run.stop()


_CHECK_GUARD = """
import os, socket, tempfile, urllib.request
assert not any(os.environ.get(v) for v in {offline!r}), "offline switches leaked into the subprocess"
for attempt in (
    lambda: socket.create_connection(("127.0.0.1", 9), timeout=1),
    lambda: socket.getaddrinfo("huggingface.co", 443),
    lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect_ex(("127.0.0.1", 9)),
    lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).connect(("127.0.0.1", 9)),
    lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", 9)),
    lambda: urllib.request.urlopen("https://huggingface.co", timeout=1),
):
    try:
        attempt()
    except OSError as exc:
        assert "network denied by test" in str(exc), exc
    else:
        raise AssertionError("connection not refused")
with tempfile.TemporaryDirectory() as folder:  # local (AF_UNIX) sockets still work
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(os.path.join(folder, "s"))
    server.listen(1)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(os.path.join(folder, "s"))
    client.sendall(b"ok")
    assert server.accept()[0].recv(2) == b"ok"
print("guard ok")
"""


def test_network_guard_refuses_and_records(tmp_path: Path, background: dict[str, _Guard]) -> None:
    # ``background`` is requested (not used) so that the long runs start with the first test of this file.
    guard = _Guard(tmp_path).start([sys.executable, "-c", _CHECK_GUARD.format(offline=OFFLINE_VARS)])
    code, out, err = guard.wait()
    assert code == 0 and "guard ok" in out, err[-4000:]
    attempts = guard.attempts()
    for what in ("create_connection", "getaddrinfo", "connect_ex", "connect (", "sendto"):
        assert what in attempts
    assert "'huggingface.co'" in attempts and "urllib" in attempts  # urlopen's lookup, with its stack


def test_import_with_network_denied(background: dict[str, _Guard]) -> None:
    background["import"].assert_clean()


def test_import_in_empty_network_namespace(background: dict[str, _Guard]) -> None:
    if "netns" not in background:
        pytest.skip("`unshare -rn` (unprivileged user + network namespace) is not available on this machine")
    code, out, err = background["netns"].wait()
    assert code == 0 and "imported" in out, err[-4000:]


# ----------------------------------------------------------------------------------------------------------------
# 2. weights_only
# ----------------------------------------------------------------------------------------------------------------

#: Tiny run of a demo config: one epoch of two batches of 64-px synthetic images, tiny encoders.
TINY_RUN = [
    "--data.image_size", "64",
    "--data.batch_size", "2",
    "--data.unlabeled_batch_size", "2",
    "--data.eval_batch_size", "4",
    "--data.num_workers", "0",
    "--data.dataset_options", "{synthetic: {n_train: 8, n_val: 4, n_test: 4, image_size: 64}}",
    "--trainer.accelerator", "cpu",
    "--trainer.limit_val_batches", "1",
    "--trainer.limit_test_batches", "1",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip
TINY_MODEL = [
    "--model.init_args.vision_encoder", "tiny",
    "--model.init_args.text_encoder", "tiny",
    "--model.init_args.project_dim", "16",
]  # fmt: skip
METHODS: list[tuple[str, type[TextSegModule]]] = [
    ("demo_supervised.yaml", SupervisedModule),
    ("demo_semimedref.yaml", SemiMedRefModule),
    ("demo_textmoe.yaml", TextMoEModule),
]
#: Leaf types a checkpoint may hold (what torch's weights-only unpickler rebuilds without importing code).
SAFE_LEAVES = (Tensor, bool, int, float, str, bytes, type(None), torch.Size, torch.dtype, torch.device)


def _data_root(config: Path, tmp_path: Path) -> str:
    """``--data.root`` for a demo config: a fresh synthetic folder per dataset (generated on first use)."""
    dataset = yaml.safe_load(config.read_text())["data"]["dataset"]
    if isinstance(dataset, str):
        return str(tmp_path / dataset)
    return json.dumps([str(tmp_path / name) for name in dataset])


def _record_torch_load(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Wrap ``torch.load``; return the list that receives the ``weights_only`` value of every call."""
    original = torch.load
    calls: list[Any] = []

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("weights_only", "<not passed>"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    return calls


def _unsafe_leaves(obj: Any, where: str = "checkpoint") -> list[str]:
    """Paths of the values in a loaded checkpoint that are not plain containers of :data:`SAFE_LEAVES`."""
    if isinstance(obj, dict):
        bad = [f"{where} key {k!r}" for k in obj if not isinstance(k, (str, int))]
        return bad + [p for k, v in obj.items() for p in _unsafe_leaves(v, f"{where}[{k!r}]")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _unsafe_leaves(v, f"{where}[{i}]")]
    return [] if isinstance(obj, SAFE_LEAVES) else [f"{where}: {type(obj).__module__}.{type(obj).__qualname__}"]


class _ParserBuilt(Exception):
    """Raised by the patched ``parse_arguments`` hook to hand the fully built ``textseg`` parser to the test."""

    def __init__(self, parser: Any) -> None:
        super().__init__("parser built")
        self.parser = parser


def test_weights_only_defaults_true_in_every_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    def capture(cli: TextSegCLI, parser: Any, args: Any) -> None:
        raise _ParserBuilt(parser)

    monkeypatch.setattr(TextSegCLI, "parse_arguments", capture)
    with pytest.raises(_ParserBuilt) as built:
        run_lightning_cli([])
    parser = built.value.parser  # the parser `textseg fit|validate|test|predict` parses with
    common = ["--model=textseg.SupervisedModule", "--data.root=unused"]
    for subcommand in SUBCOMMANDS:
        assert parser.parse_args([subcommand, *common])[subcommand]["weights_only"] is True, subcommand
    # An explicit opt-out for a trusted legacy checkpoint still parses.
    assert parser.parse_args(["test", *common, "--weights_only=false"])["test"]["weights_only"] is False


@pytest.mark.parametrize(("config_name", "module_class"), METHODS, ids=[m.__name__ for _, m in METHODS])
def test_checkpoints_load_weights_only(
    config_name: str, module_class: type[TextSegModule], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = CONFIGS / config_name
    data = ["--config", str(config), "--data.root", _data_root(config, tmp_path), *TINY_RUN]
    run_dir = tmp_path / "fit"
    loads = _record_torch_load(monkeypatch)
    main([
        "fit", *data, *TINY_MODEL,
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2",
        "--test_after_fit", "true",
        "--run_dir", str(run_dir),
    ])  # fmt: skip
    assert (run_dir / "test_metrics.json").is_file()
    assert loads and all(w is True for w in loads), f"--test_after_fit read the checkpoint with {loads}"
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    monkeypatch.undo()

    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert _unsafe_leaves(raw) == []
    assert raw["hyper_parameters"]["_class_path"].rsplit(".", 1)[-1] == module_class.__name__
    state = raw["state_dict"]
    assert state and all(isinstance(v, Tensor) for v in state.values())

    model = module_class.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert type(model) is module_class
    reloaded = model.state_dict()
    assert set(reloaded) == set(state)
    assert all(torch.equal(reloaded[k], state[k]) for k in state)

    loads = _record_torch_load(monkeypatch)
    test_dir = tmp_path / "test"
    main(["test", *data, "--ckpt_path", str(ckpt), "--run_dir", str(test_dir)])
    metrics = json.loads((test_dir / "test_metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["test_dice"] <= 1.0
    # LightningCLI reads the hyper-parameters, then the trainer restores the weights: both restricted.
    assert len(loads) >= 2 and all(w is True for w in loads), f"textseg test read the checkpoint with {loads}"


# ----------------------------------------------------------------------------------------------------------------
# 3. trust_remote_code
# ----------------------------------------------------------------------------------------------------------------

#: Classes whose ``from_pretrained`` is recorded (every model, config and tokenizer class inherits from one).
PRETRAINED_CLASSES = (
    transformers.PreTrainedModel,
    transformers.PretrainedConfig,
    transformers.PreTrainedTokenizerBase,
    transformers.AutoModel,
    transformers.AutoConfig,
    transformers.AutoTokenizer,
)
#: Architecture of the tiny BERT written to disk.
DIR_HIDDEN = 16
REMOTE_MODULES = ("configuration_evil", "modeling_evil", "tokenization_evil")
TEXTS = ["Bilateral pulmonary infection, two infected areas.", "No lesion."]


class _Recorder:
    """Records ``from_pretrained`` keyword arguments and refuses any dynamic (remote) module import."""

    def __init__(self) -> None:
        self.pretrained: list[tuple[str, dict[str, Any]]] = []
        self.dynamic: list[tuple[Any, ...]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for cls in PRETRAINED_CLASSES:
            original = inspect.getattr_static(cls, "from_pretrained")
            monkeypatch.setattr(cls, "from_pretrained", classmethod(self._wrap(original.__func__)))

        def refuse_dynamic(*args: Any, **kwargs: Any) -> Any:
            self.dynamic.append(args)
            raise AssertionError(f"remote code requested: {args}")

        for name, module in list(sys.modules.items()):
            if name.startswith("transformers") and hasattr(module, "get_class_from_dynamic_module"):
                monkeypatch.setattr(module, "get_class_from_dynamic_module", refuse_dynamic)

    def _wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        def from_pretrained(klass: type, *args: Any, **kwargs: Any) -> Any:
            self.pretrained.append((klass.__name__, dict(kwargs)))
            return func(klass, *args, **kwargs)

        return from_pretrained

    def remote_code_requests(self) -> list[str]:
        return [name for name, kwargs in self.pretrained if kwargs.get("trust_remote_code")]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> _Recorder:
    rec = _Recorder()
    rec.install(monkeypatch)
    return rec


def _write_remote_code(directory: Path) -> None:
    """Put the modules named by the ``auto_map`` entries into ``directory``; running one makes ``directory/RAN_*``.

    The marker path is absolute: transformers runs remote code from a copy in its module cache.
    """
    for module in REMOTE_MODULES:
        marker = str(directory.resolve() / f"RAN_{module}")
        (directory / f"{module}.py").write_text(f"import pathlib\npathlib.Path({marker!r}).mkdir()\n")


def _bert_directory(path: Path, remote_code: bool) -> Path:
    """A tiny BERT checkpoint directory; with ``remote_code`` its configs ask for Python files that it also holds."""
    path.mkdir(parents=True)
    config = transformers.BertConfig(
        vocab_size=len(TINY_TEXT_VOCAB),
        hidden_size=DIR_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * DIR_HIDDEN,
        max_position_embeddings=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformers.BertModel(config, add_pooling_layer=False).save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(TINY_TEXT_VOCAB) + "\n", encoding="utf-8")
    tokenizer_config: dict[str, Any] = {"do_lower_case": True, "tokenizer_class": "BertTokenizer"}
    if remote_code:
        raw = json.loads((path / "config.json").read_text())
        raw["model_type"] = "evil-bert"
        raw["architectures"] = ["EvilModel"]
        raw["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
        (path / "config.json").write_text(json.dumps(raw))
        tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
        tokenizer_config["tokenizer_class"] = "EvilTokenizer"
        _write_remote_code(path)
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return path


def _assert_no_remote_code_ran(directory: Path) -> None:
    assert not list(directory.glob("RAN_*")), "a remote-code module of the checkpoint directory was executed"
    assert not [name for name in sys.modules if name.rsplit(".", 1)[-1] in REMOTE_MODULES]


def test_text_encoder_local_directory_never_trusts_remote_code(tmp_path: Path, recorder: _Recorder) -> None:
    encoder = TextEncoder(str(_bert_directory(tmp_path / "bert", remote_code=False)), max_length=16)
    features = encoder(TEXTS)
    assert features.tokens.shape == (2, 16, DIR_HIDDEN) and encoder.hidden_size == DIR_HIDDEN
    assert recorder.remote_code_requests() == [] and recorder.dynamic == []


def test_remote_code_directory_loads_as_plain_bert(
    tmp_path: Path, recorder: _Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    plain = TextEncoder(str(_bert_directory(tmp_path / "plain", remote_code=False)), max_length=16)
    evil_dir = _bert_directory(tmp_path / "evil", remote_code=True)
    with caplog.at_level(logging.WARNING, logger="textseg.models.encoders"):
        evil = TextEncoder(str(evil_dir), max_length=16)
    assert "model_type 'evil-bert' loaded as a plain BERT" in caplog.text
    assert type(evil.bert) is transformers.BertModel and type(evil.tokenizer) is transformers.BertTokenizer
    expected, got = plain(TEXTS), evil(TEXTS)  # same weights and vocabulary: identical features
    assert torch.equal(expected.tokens, got.tokens) and torch.equal(expected.mask, got.mask)
    _assert_no_remote_code_ran(evil_dir)
    assert recorder.remote_code_requests() == [] and recorder.dynamic == []


def test_hub_id_downloads_no_code(tmp_path: Path, recorder: _Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    evil_dir = _bert_directory(tmp_path / "evil", remote_code=True)
    downloads: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def fake_snapshot_download(*args: Any, **kwargs: Any) -> str:
        downloads.append((args, kwargs))
        return str(evil_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    encoder = TextEncoder("some-org/evil-bert", max_length=16)
    assert type(encoder.bert) is transformers.BertModel
    ((args, kwargs),) = downloads
    assert args == ("some-org/evil-bert",) and "trust_remote_code" not in kwargs
    patterns = kwargs["allow_patterns"]
    assert not [f for f in os.listdir(evil_dir) if f.endswith(".py") and any(fnmatch.fnmatch(f, p) for p in patterns)]
    _assert_no_remote_code_ran(evil_dir)
    assert recorder.remote_code_requests() == [] and recorder.dynamic == []


def test_vision_directory_with_auto_map_runs_no_code(tmp_path: Path, recorder: _Recorder) -> None:
    directory = tmp_path / "convnext"
    config = transformers.ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64])
    transformers.ConvNextModel(config).save_pretrained(directory)
    raw = json.loads((directory / "config.json").read_text())
    raw["model_type"] = "evil-convnext"
    raw["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}
    (directory / "config.json").write_text(json.dumps(raw))
    _write_remote_code(directory)
    model = build_vision_encoder(str(directory))
    assert type(model) is transformers.ConvNextModel and tuple(model.config.hidden_sizes or ()) == (8, 16, 32, 64)
    _assert_no_remote_code_ran(directory)
    assert recorder.dynamic == [] and recorder.remote_code_requests() == []
    model_calls = [kwargs for name, kwargs in recorder.pretrained if name == "ConvNextModel"]
    assert model_calls and all(kwargs.get("local_files_only") is True for kwargs in model_calls)


def test_package_source_never_trusts_remote_code() -> None:
    pattern = re.compile(r"""trust_remote_code["']?\s*[=:]\s*(True|1)\b""")
    sources = sorted((REPO / "textseg").rglob("*.py"))
    assert len(sources) > 20
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in sources for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line)]  # fmt: skip
    assert offenders == []


# ----------------------------------------------------------------------------------------------------------------
# 4. the demo (started by ``background`` with the import checks; it ran while the tests above ran)
# ----------------------------------------------------------------------------------------------------------------


def test_demo_runs_with_network_denied(background: dict[str, _Guard]) -> None:
    background["demo"].assert_clean()
    run_dir = background["demo"].root.parent / "run"
    metrics = json.loads((run_dir / "test_metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["test_dice"] <= 1.0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["init_args"]["text_encoder"] == "minilm" and config["weights_only"] is True
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["_class_path"] == "textseg.SemiMedRefModule"
