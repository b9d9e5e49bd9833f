"""The CLI's client config file (corral/client_config.py, `corral config ...`): precedence of
flags, environment and context, file handling (missing, broken, 0600, relative paths), the
kubectl-style verbs. No server: the live test is in tests/test_ca.py."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from corral import client_config
from corral.cli import main
from corral.client_config import ClientConfigError, Connection, config_path, load, resolve

FLAGS_NONE = {"server": None, "ca_file": None, "cert_file": None, "key_file": None}


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


CONFIG = """
current-context: prod
clusters:
- name: prod
  cluster: {server: "10.0.0.5:7100,10.0.0.6:7100", certificate-authority: pki/ca.pem}
- name: lab
  cluster: {server: "10.1.0.5:7100"}
users:
- name: alice
  user: {client-certificate: /abs/alice.pem, client-key: pki/alice-key.pem}
contexts:
- name: prod
  context: {cluster: prod, user: alice}
- name: lab
  context: {cluster: lab}
"""


def test_the_context_gives_what_no_flag_or_variable_does(tmp_path):
    path = _write(tmp_path / "config", CONFIG)
    got = resolve(FLAGS_NONE, config_file=str(path), environ={})
    assert got == Connection(server="10.0.0.5:7100,10.0.0.6:7100", ca_file=str(tmp_path / "pki/ca.pem"),
                             cert_file="/abs/alice.pem", key_file=str(tmp_path / "pki/alice-key.pem"),
                             context="prod")  # relative paths are relative to the file
    lab = resolve(FLAGS_NONE, config_file=str(path), context="lab", environ={})
    assert lab == Connection(server="10.1.0.5:7100", context="lab")


def test_flags_beat_the_environment_which_beats_the_context(tmp_path):
    path = _write(tmp_path / "config", CONFIG)
    env = {"CORRAL_SERVER": "env:1", "CORRAL_TLS_CERT_FILE": "/env/cert.pem", "CORRAL_CLIENT_CONFIG": str(path)}
    got = resolve({**FLAGS_NONE, "server": "flag:1"}, environ=env)
    assert got.server == "flag:1"
    assert got.cert_file == "/env/cert.pem"
    assert got.key_file == str(tmp_path / "pki/alice-key.pem")  # per value: the rest from the context
    assert got.ca_file == str(tmp_path / "pki/ca.pem")
    assert resolve({**FLAGS_NONE, "ca_file": "/flag/ca.pem"}, environ=env).ca_file == "/flag/ca.pem"


def test_no_file_no_context_means_the_old_defaults(tmp_path):
    assert resolve(FLAGS_NONE, config_file=str(tmp_path / "absent"), environ={}) == Connection(server="127.0.0.1:7100")
    assert resolve(FLAGS_NONE, config_file=os.devnull, environ={}) == Connection(server="127.0.0.1:7100")
    no_current = _write(tmp_path / "config", CONFIG.replace("current-context: prod", ""))
    assert resolve(FLAGS_NONE, config_file=str(no_current), environ={}).server == "127.0.0.1:7100"


def test_where_the_file_is():
    assert config_path("/x/y", {"CORRAL_CLIENT_CONFIG": "/a/b"}) == Path("/x/y")
    assert config_path(None, {"CORRAL_CLIENT_CONFIG": "/a/b", "HOME": "/home/u"}) == Path("/a/b")
    assert config_path(None, {"HOME": "/home/u"}) == Path("/home/u/.config/corral/config")
    assert config_path(None, {"HOME": "/home/u", "XDG_CONFIG_HOME": "/xdg"}) == Path("/xdg/corral/config")
    # The daemons' settings file variable is not the CLI's.
    assert config_path(None, {"HOME": "/home/u", "CORRAL_CONFIG": "/etc/corral/handler.yaml"}) == \
        Path("/home/u/.config/corral/config")


@pytest.mark.parametrize("text,message", [
    ("clusters: [", "is not YAML"),
    ("- a\n- b\n", "expected a mapping"),
    ("current-context: x\nclustres: []\n", "clustres: Extra inputs are not permitted"),
    ("clusters:\n- name: a\n  cluster: {}\n", "server"),
    ("clusters:\n- {name: a, cluster: {server: 'h:1'}}\n- {name: a, cluster: {server: 'h:2'}}\n",
     "cluster a is named more than once"),
])
def test_a_broken_file_is_named_with_what_is_wrong(tmp_path, text, message):
    path = _write(tmp_path / "config", text)
    with pytest.raises(ClientConfigError) as caught:
        load(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


@pytest.mark.parametrize("context,message", [
    ("nope", "context 'nope' is not in client config"),
    ("dangling", "names cluster 'gone'"),
    ("ghost-user", "names user 'ghost'"),
])
def test_a_context_naming_what_is_not_there_is_an_error(tmp_path, context, message):
    path = _write(tmp_path / "config", CONFIG + "- {name: dangling, context: {cluster: gone}}\n"
                  "- {name: ghost-user, context: {cluster: lab, user: ghost}}\n")
    with pytest.raises(ClientConfigError, match=message):
        resolve(FLAGS_NONE, config_file=str(path), context=context, environ={})


def test_the_verbs_write_a_private_file_a_user_can_switch_with(tmp_path, capsys, monkeypatch):
    path = tmp_path / "dir" / "config"
    pki = tmp_path / "pki"
    base = ["--client-config", str(path), "config"]
    monkeypatch.chdir(tmp_path)  # relative paths given to set-* are stored absolute
    assert main([*base, "set-cluster", "local", "--server", "127.0.0.1:7100", "--ca-file", "pki/ca.pem"]) == 0
    assert main([*base, "set-credentials", "admin", "--client-certificate", "pki/admin.pem",
                 "--client-key", "pki/admin-key.pem"]) == 0
    assert main([*base, "set-credentials", "viewer", "--cert-file", "pki/viewer.pem"]) == 0
    assert main([*base, "set-context", "local", "--cluster", "local", "--user", "admin"]) == 0
    assert main([*base, "set-context", "look", "--cluster", "local", "--user", "viewer"]) == 0
    assert main([*base, "use-context", "local"]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["config"]  # no temporary left behind
    config = load(path)
    assert config.current_context == "local"
    assert config.find(config.clusters, "local").cluster.certificate_authority == str(pki / "ca.pem")
    # A change keeps what it does not name.
    assert main([*base, "set-credentials", "viewer", "--key-file", "pki/viewer-key.pem"]) == 0
    viewer = load(path).find(load(path).users, "viewer").user
    assert (viewer.client_certificate, viewer.client_key) == (str(pki / "viewer.pem"), str(pki / "viewer-key.pem"))
    capsys.readouterr()
    assert main([*base, "get-contexts"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CURRENT", "NAME", "CLUSTER", "USER"]
    assert lines[1].split() == ["*", "local", "local", "admin"] and lines[2].split() == ["look", "local", "viewer"]
    assert main([*base, "use-context", "look"]) == 0 and main([*base, "current-context"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "look"
    assert main([*base, "view"]) == 0
    assert "current-context: look" in capsys.readouterr().out
    # Refusals: exit 1, file unchanged.
    before = path.read_text()
    assert main([*base, "use-context", "nope"]) == 1
    assert main([*base, "set-cluster", "new"]) == 1  # a new cluster needs --server
    assert main([*base, "set-context", "new"]) == 1  # a new context needs --cluster
    assert "no context 'nope'" in capsys.readouterr().err
    assert path.read_text() == before
    assert main([*base, "delete-context", "look"]) == 0
    assert load(path).current_context == "" and [c.name for c in load(path).contexts] == ["local"]


def test_an_existing_readable_file_becomes_private_on_write(tmp_path):
    path = _write(tmp_path / "config", CONFIG)
    path.chmod(0o644)
    assert main(["--client-config", str(path), "config", "use-context", "lab"]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_config_commands_work_while_the_context_cannot_connect(tmp_path, monkeypatch, capsys):
    """The connection is resolved only when a command calls the API: a context naming files
    that do not exist can still be listed and left; a command that dials names file and context."""
    path = _write(tmp_path / "config", CONFIG)
    monkeypatch.setenv("CORRAL_CLIENT_CONFIG", str(path))
    for name in ("CORRAL_SERVER", "CORRAL_TLS_CA_FILE", "CORRAL_TLS_CERT_FILE", "CORRAL_TLS_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["config", "get-contexts"]) == 0
    assert main(["get", "vms"]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "pki/ca.pem") in err and "context 'prod'" in err
    assert main(["--context", "nope", "get", "vms"]) == 1
    assert "context 'nope' is not in client config" in capsys.readouterr().err
    assert main(["config", "use-context", "lab"]) == 0
    assert client_config.load(path).current_context == "lab"
