"""Bad models and bad `sparring game` inputs end in one clear line, exit code 2, no traceback and no
partial output (found by a trial of bad inputs; each case here failed with a traceback before)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tiny import make_tiny_model

from sparring.cli import main
from sparring.errors import UserError


def one_clear_line(capsys) -> str:
    """stderr of the command just run: exactly one line, sparring's, without traceback text."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sparring: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------- models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def copy_model(tiny: Path, dest: Path) -> Path:
    shutil.copytree(tiny, dest)
    return dest


def edit_config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


class RefusedGlobal:
    """Pickles as a call to `print`: code, which torch's weights_only unpickler refuses."""

    def __reduce__(self):
        return (print, ("a pickle ran code",))


def state_dict_with_code(d: Path) -> dict:
    from safetensors.torch import load_file

    sd = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    return {**sd, "extra": RefusedGlobal()}


def no_weights(d):
    (d / "model.safetensors").unlink()


def refused_pickle(d):
    import torch

    torch.save(state_dict_with_code(d), d / "pytorch_model.bin")


def refused_legacy_pickle(d):  # torch.save's pre-zip format, which cannot be memory-mapped
    import torch

    torch.save(state_dict_with_code(d), d / "pytorch_model.bin", _use_new_zipfile_serialization=False)


def truncated_bin(d):
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    data = (d / "pytorch_model.bin").read_bytes()
    (d / "pytorch_model.bin").write_bytes(data[: len(data) // 2])


def custom_code(d):
    edit_config(
        d,
        model_type="my-own-llm",
        auto_map={"AutoConfig": "configuration_mine.MyConfig", "AutoModelForCausalLM": "modeling_mine.MyModel"},
    )


def unknown_type(d):
    edit_config(d, model_type="frobnicator")


def truncated_safetensors(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def garbage_safetensors(d):
    (d / "model.safetensors").write_bytes(b"\xff" * 64)


def config_not_json(d):
    (d / "config.json").write_text("{model_type: llama")


def config_not_utf8(d):
    (d / "config.json").write_bytes(b'{"model_type": "ll\xe4ma"}')


def missing_shard(d):
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    "damage, where, remedy",
    [
        (no_weights, "", "has no weights (transformers reads model.safetensors"),
        (
            refused_pickle,
            "pytorch_model.bin",
            "torch refuses to unpickle it with weights_only=True (it references print",
        ),
        (refused_legacy_pickle, "pytorch_model.bin", "convert it to safetensors once"),
        (truncated_bin, "pytorch_model.bin", "corrupt or truncated"),
        (custom_code, "", "sparring never passes trust_remote_code=True"),
        (unknown_type, "", "model_type 'frobnicator', which transformers"),
        (truncated_safetensors, "model.safetensors", "corrupt or truncated"),
        (garbage_safetensors, "model.safetensors", "download or copy it again"),
        (config_not_json, "config.json", "not valid JSON (line 1, column 2"),
        (config_not_utf8, "config.json", "not UTF-8 text"),
        (missing_shard, "", "lists 1 missing shard(s), first model-00002-of-00002.safetensors"),
    ],
)
def test_a_broken_model_directory_is_one_clear_line_before_any_output(tiny, tmp_path, capsys, damage, where, remedy):
    d = copy_model(tiny, tmp_path / "model")
    damage(d)
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--model",
            str(d),
            "--prompts",
            "shipped:heldout",
            "--out",
            str(out),
            "--max-new-tokens",
            "2",
            "--no-progress",
        ]
    )
    line = one_clear_line(capsys)
    assert code == 2
    assert str(d / where).rstrip("/") in line and remedy in line, line
    assert "a pickle ran code" not in line  # the refused pickle was never executed
    assert not out.exists()


def test_custom_code_message_says_how_to_convert(tiny, tmp_path):
    d = copy_model(tiny, tmp_path / "model")
    custom_code(d)
    from sparring.models import resolve_model

    with pytest.raises(UserError) as err:
        resolve_model(d)
    assert "auto_map" in str(err.value) and "save_pretrained" in str(err.value)


def test_a_known_model_type_next_to_an_auto_map_loads_the_builtin_class(tiny, tmp_path):
    # transformers ignores auto_map for an architecture it implements: no reason to refuse it
    d = copy_model(tiny, tmp_path / "model")
    edit_config(d, auto_map={"AutoModelForCausalLM": "modeling_mine.MyModel"})
    from sparring.models import load_model

    assert type(load_model(str(d))).__name__ == "LlamaForCausalLM"


def test_a_directory_without_tokenizer_names_the_files_to_copy(tiny, tmp_path, capsys):
    d = copy_model(tiny, tmp_path / "model")
    for f in d.glob("tokenizer*"):
        f.unlink()
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--model",
            str(d),
            "--prompts",
            "shipped:heldout",
            "--out",
            str(out),
            "--max-new-tokens",
            "2",
            "--no-progress",
        ]
    )
    line = one_clear_line(capsys)
    assert code == 2
    assert f"cannot load the tokenizer of model {str(d)!r}" in line and "has no tokenizer files" in line, line
    assert not out.exists()


def test_a_model_transformers_cannot_load_as_a_causal_lm_is_a_user_error(tiny, tmp_path):
    # A known architecture without a causal-LM head passes resolve_model; from_pretrained's refusal
    # (a ValueError) becomes a UserError naming the model.
    from transformers import CLIPVisionConfig

    d = tmp_path / "clip"
    d.mkdir()
    CLIPVisionConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(d)
    shutil.copy(tiny / "model.safetensors", d / "model.safetensors")
    from sparring.models import load_model

    with pytest.raises(UserError, match=f"cannot load model {str(d)!r}: ValueError"):
        load_model(str(d))


def test_a_local_looking_name_is_never_a_hub_id(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    out = tmp_path / "eval"
    code = main(["eval", "--model", "runs/typo", "--prompts", "shipped:heldout", "--out", str(out)])
    line = one_clear_line(capsys)
    assert code == 2
    assert "model directory runs/typo not found (runs/ exists here, so this is a local path, never a hub id)" in line
    assert not out.exists()


def test_an_uncached_hub_id_offline_says_so_without_asking(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 (conftest) sets
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "eval",
            "--model",
            "sparring-test-org/no-such-model",
            "--prompts",
            "shipped:heldout",
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    line = one_clear_line(capsys)
    assert code == 2
    assert "model 'sparring-test-org/no-such-model': not on disk, not in the local HF cache" in line
    assert "HF_HUB_OFFLINE is set" in line and "hf download sparring-test-org/no-such-model" in line


def fake_hub_cache(root: Path, repo_id: str, snapshot_files: dict[str, Path | str]) -> Path:
    """The layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/COMMIT/...}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "2" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in snapshot_files.items():
        if isinstance(source, Path):
            shutil.copy(source, snapshot / name)
        else:
            (snapshot / name).write_text(source)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.mark.parametrize("files", ["config only", "one shard of two"])
def test_a_hub_id_cached_in_part_is_not_taken_for_a_cached_model(tiny, tmp_path, monkeypatch, capsys, files):
    from huggingface_hub import constants

    index = json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    )
    snapshot_files = (
        {"config.json": tiny / "config.json"}
        if files == "config only"
        else {
            "config.json": tiny / "config.json",
            "model.safetensors.index.json": index,
            "model-00001-of-00002.safetensors": tiny / "model.safetensors",
        }
    )
    fake_hub_cache(tmp_path / "hub", "sparring-test-org/tiny", snapshot_files)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "eval",
                "--model",
                "sparring-test-org/tiny",
                "--prompts",
                "shipped:heldout",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 2
    )
    line = one_clear_line(capsys)
    assert "model 'sparring-test-org/tiny': not on disk, its weights are not in the local HF cache" in line, line
    assert not (tmp_path / "eval").exists()


class SilentHub:
    """A stand-in hub on localhost that reads requests and never answers: the worst network (a proxy
    or firewall that swallows requests). Records the request line of each connection."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = []
        self.requests = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.connections.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn):
        try:
            self.requests.append(conn.recv(65536).decode("latin-1").split("\r\n")[0])
        except OSError:
            pass

    def close(self):
        self.sock.close()
        for c in self.connections:
            c.close()


@pytest.fixture
def silent_hub(tmp_path, monkeypatch):
    hub = SilentHub()
    # The hub "enabled" (HF_HUB_OFFLINE=0) on a machine that cannot reach it; an empty HF cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    yield hub
    hub.close()


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    # A fresh interpreter, because huggingface_hub reads its environment once, at import. The timeout
    # only keeps a regression (minutes of retries) from hanging the test session.
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=240)


def test_an_unreachable_hub_fails_after_one_request_with_one_clear_line(silent_hub, tmp_path):
    out = tmp_path / "eval"
    proc = run_python(
        "import sys; from sparring.cli import main; sys.exit(main(['eval', '--model', "
        f"'sparring-test-org/no-such-model', '--prompts', 'shipped:heldout', '--out', {str(out)!r}]))",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith(
        "sparring: error: model 'sparring-test-org/no-such-model': not on disk, not in the local HF cache"
    ), line
    assert f"the hub ({silent_hub.url}) is not reachable" in line and "hf download" in line, line
    # One request about the model, no retries. huggingface_hub may also ask for its "agent harness"
    # list (telemetry it sends with every request, fetched once a day with a 3 s timeout).
    asked = [r for r in silent_hub.requests if "/api/agent-harnesses" not in r]
    assert asked == ["HEAD /sparring-test-org/no-such-model/resolve/main/config.json HTTP/1.1"], silent_hub.requests
    assert not out.exists()


def test_a_hub_id_in_the_local_cache_loads_without_the_hub(silent_hub, tiny, tmp_path):
    fake_hub_cache(tmp_path / "hf" / "hub", "sparring-test-org/tiny", {f.name: f for f in tiny.iterdir()})
    proc = run_python(
        "from sparring.models import load_model, load_tokenizer, model_fingerprint, resolve_model\n"
        "name = 'sparring-test-org/tiny'\n"
        "print(resolve_model(name), model_fingerprint(name))\n"
        "print(load_tokenizer(name).eos_token, type(load_model(name)).__name__)\n",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        "sparring-test-org/tiny",
        "sparring-test-org/tiny@main",
        "<|im_end|>",
        "LlamaForCausalLM",
    ], proc.stdout
    # Nothing asked about the model (huggingface_hub's own "agent harness" telemetry aside).
    assert [r for r in silent_hub.requests if "/api/agent-harnesses" not in r] == [], silent_hub.requests


def test_a_damaged_model_in_the_hub_cache_is_named(silent_hub, tiny, tmp_path):
    snapshot = fake_hub_cache(tmp_path / "hf" / "hub", "sparring-test-org/tiny", {f.name: f for f in tiny.iterdir()})
    truncated_safetensors(snapshot)
    proc = run_python(
        "from sparring.models import resolve_model\nresolve_model('sparring-test-org/tiny')", cwd=tmp_path
    )
    assert (
        "UserError" in proc.stderr and f"{snapshot / 'model.safetensors'}: not a readable safetensors" in proc.stderr
    ), proc.stderr
    assert silent_hub.requests == []


# --------------------------------------------------------------------------------------------- game


def game(*argv) -> int:
    return main(["game", *argv])


def test_game_matrix_that_is_not_utf8(tmp_path, capsys):
    m = tmp_path / "m.json"
    m.write_bytes(b"[[0.5, 0.5], [0.5, 0.5]] \xff")
    out = tmp_path / "o.json"
    assert game("--matrix", str(m), "--out", str(out)) == 2
    line = one_clear_line(capsys)
    assert f"{m}: not UTF-8 text (byte 0xff at offset 25); save the matrix as UTF-8 JSON" in line, line
    assert list(tmp_path.iterdir()) == [m]


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
        ("[[0.5, 1%s], [0, 0.5]]" % ("0" * 400), "a number too large for a float"),
    ],
)
def test_game_matrix_files_that_defeat_the_json_reader(tmp_path, capsys, content, fragment):
    m = tmp_path / "m.json"
    m.write_text(content)
    assert game("--matrix", str(m), "--out", str(tmp_path / "o.json")) == 2
    line = one_clear_line(capsys)
    assert str(m) in line and fragment in line, line
    assert list(tmp_path.iterdir()) == [m]


def test_game_out_that_is_a_directory_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    assert game("--iters", "5", "--out", str(out)) == 2
    line = one_clear_line(capsys)
    assert f"--out {out} is a directory; give a file name" in line, line
    assert list(tmp_path.iterdir()) == [out] and not any(out.iterdir())  # no <out>.tmp anywhere
    assert "exploitability" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "plot, fragment",
    [
        ("p.xyz", "matplotlib cannot write .xyz files; use one of"),
        ("p", "has no extension, which picks the image format"),
        ("o.json", "--plot and --out are the same file"),
        ("sub", "is a directory; give a file name"),
        ("", "--plot needs a file name"),
    ],
)
def test_game_plot_path_is_checked_before_any_work(tmp_path, capsys, plot, fragment):
    (tmp_path / "sub").mkdir()
    assert game("--iters", "5", "--out", str(tmp_path / "o.json"), "--plot", str(tmp_path / plot) if plot else "") == 2
    line = one_clear_line(capsys)
    assert fragment in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    assert capsys.readouterr().out == ""  # refused before running anything


@pytest.mark.skipif(shutil.which("xelatex") is not None, reason="LaTeX is installed: .pgf works")
def test_game_pgf_plot_without_latex_is_refused_up_front(tmp_path, capsys):
    assert game("--iters", "5", "--out", str(tmp_path / "o.json"), "--plot", str(tmp_path / "p.pgf")) == 2
    assert ".pgf needs LaTeX" in one_clear_line(capsys)
    assert not any(tmp_path.iterdir())


def test_game_plot_that_matplotlib_fails_to_write_leaves_nothing(tmp_path, capsys, monkeypatch):
    # A failure only savefig can discover (a codec missing at run time): neither file, no temporary.
    import matplotlib.figure

    def broken_savefig(self, *args, **kwargs):
        raise RuntimeError("no encoder for this format")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    out, png = tmp_path / "o.json", tmp_path / "p.png"
    assert game("--iters", "5", "--out", str(out), "--plot", str(png)) == 2
    line = capsys.readouterr().err.strip()
    assert (
        line == f"sparring: error: --plot {png}: matplotlib could not write it (no encoder for this format); "
        "use .png or .pdf"
    )
    assert not any(tmp_path.iterdir())


def test_game_plot_extension_in_capitals_and_other_formats_work(tmp_path):
    assert game("--iters", "5", "--out", str(tmp_path / "o.json"), "--plot", str(tmp_path / "p.PNG")) == 0
    assert (tmp_path / "p.PNG").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert game("--iters", "5", "--out", str(tmp_path / "o.json"), "--plot", str(tmp_path / "p.svg")) == 0
    assert b"<svg" in (tmp_path / "p.svg").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "p.PNG", "p.svg"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--out", ""], "--out needs a file name"),
        (["--out", "/dev/null"], "--out /dev/null exists and is not a regular file"),
        (["--seed", "-1", "--matrix", "random"], "--seed must be >= 0, got -1"),
        (["--seed", "-1", "--algo", "sppo-sampled"], "--seed must be >= 0, got -1"),
        (["--iters", str(10**13)], "out of memory (Unable to allocate"),
        (["--eta", "1e300"], "sppo: pi sums to 2.0, not 1: the iteration broke down numerically with --eta 1e+300"),
        (["--algo", "nash-mp", "--beta", "1e300", "--eta", "1e300"], "try a smaller --eta"),
        (["--algo", "nash-md", "--beta", "1e-300", "--eta", "1"], "use a larger --beta"),
    ],
)
def test_game_other_arguments_that_ended_in_a_traceback(tmp_path, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(tmp_path)
    if "--out" not in argv:
        argv = [*argv, "--out", "o.json"]
    assert game("--iters", "5", *argv) == 2
    line = one_clear_line(capsys)
    assert fragment in line, line
    assert not any(tmp_path.iterdir())


def test_game_out_would_overwrite_the_matrix_file(tmp_path, capsys):
    m = tmp_path / "m.json"
    m.write_text("[[0.5, 0.3], [0.7, 0.5]]")
    assert game("--matrix", str(m), "--out", str(m)) == 2
    assert "would overwrite the --matrix file" in one_clear_line(capsys)
    assert m.read_text() == "[[0.5, 0.3], [0.7, 0.5]]"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_game_out_in_a_directory_without_write_permission(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert game("--iters", "5", "--out", str(locked / "o.json")) == 2
        assert "permission denied" in one_clear_line(capsys)
    finally:
        locked.chmod(0o700)


def test_game_success_leaves_only_the_outputs(tmp_path):
    out, png = tmp_path / "o.json", tmp_path / "p.png"
    assert game("--iters", "5", "--out", str(out), "--plot", str(png)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json", "p.png"]
    assert json.loads(out.read_text())["settings"]["iters"] == 5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == png.stat().st_mode & 0o777 == 0o666 & ~umask  # not a temp file's 0600


def test_game_report_writes_a_page_and_refuses_a_clashing_name(tmp_path, capsys):
    out, plot, page = tmp_path / "o.json", tmp_path / "p.png", tmp_path / "r.html"
    assert main(["game", "--iters", "50", "--out", str(out), "--plot", str(plot), "--report", str(page)]) == 0
    html = page.read_text()
    assert "data:image/png;base64," in html and "exploitability" in html.lower()
    assert main(["game", "--iters", "50", "--out", str(out), "--report", str(out)]) == 2
    assert "--report and --out are the same file" in capsys.readouterr().err
