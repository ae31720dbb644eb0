"""The systemd units restart what stops: the enclave (through the watch and nitro-cli), the
parent services (Restart=always, never giving up), the proxy keeps its secret store."""

from __future__ import annotations

from parent import _userdata


def _units() -> dict[str, str]:
    from test_deploy import _cfg  # the deployment settings the deploy tests use

    return _userdata.render_units(_cfg())


def test_the_enclave_is_watched_and_restarted() -> None:
    watch = _units()["nitro-toolkit-enclave-watch.service"]
    assert "-m parent enclave-watch --enclave-name app --unit nitro-toolkit-enclave.service" \
        in watch
    assert "Restart=always" in watch and "StartLimitIntervalSec=0" in watch


def test_parent_services_restart_and_never_give_up() -> None:
    units = _units()
    for name in ("nitro-toolkit-proxy.service", "nitro-toolkit-kms-relay.service",
                 "nitro-toolkit-credentials.service"):
        text = units[name]
        assert "Restart=always" in text and "RestartSec=" in text, name
        assert "StartLimitIntervalSec=0" in text, name


def test_the_proxy_survives_enclave_restarts_and_keeps_its_store() -> None:
    proxy = _units()["nitro-toolkit-proxy.service"]
    assert "Requires=nitro-toolkit-enclave.service" not in proxy
    assert "Wants=nitro-toolkit-enclave.service" in proxy
    assert "--secret-store /var/lib/nitro-toolkit/secrets" in proxy
    assert "StateDirectory=nitro-toolkit" in proxy and "TimeoutStopSec=" in proxy
    creds = _units()["nitro-toolkit-credentials.service"]
    assert "Requires=nitro-toolkit-enclave.service" in creds  # restarted with the enclave
