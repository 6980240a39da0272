"""The model-repository, shared-memory, logging and trace APIs need the admin key; inference
does not."""

from __future__ import annotations

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from ensemble.server import ADMIN_HEADER, admin_headers

pytestmark = pytest.mark.server


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unauthenticated_unload_is_refused_and_the_model_stays_ready(server, protocol):
    assert server.admin_key
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(server.http_url if protocol == "http" else server.grpc_url)
    for headers in (None, admin_headers(protocol, "wrong-key"), {ADMIN_HEADER: server.admin_key}
                    if protocol == "grpc" else None):
        with pytest.raises(Exception, match=r"(?i)permission|forbidden|denied|restricted"):
            client.unload_model("e11_entity", headers=headers)
        with pytest.raises(Exception, match=r"(?i)permission|forbidden|denied|restricted"):
            client.get_model_repository_index(headers=headers)
        with pytest.raises(Exception, match=r"(?i)permission|forbidden|denied|restricted"):
            client.register_system_shared_memory("x", "/x", 16, headers=headers)
        with pytest.raises(Exception, match=r"(?i)permission|forbidden|denied|restricted"):
            client.update_log_settings({"log_verbose_level": 3}, headers=headers)
        with pytest.raises(Exception, match=r"(?i)permission|forbidden|denied|restricted"):
            client.update_trace_settings(settings={"trace_rate": "1"}, headers=headers)
    assert client.is_model_ready("e11_entity") and client.is_model_ready("fused_text")
    admin = admin_headers(protocol, server.admin_key)
    settings = client.get_log_settings(headers=admin, **({"as_json": True}
                                                          if protocol == "grpc" else {}))
    assert int(settings["settings"]["log_verbose_level"]["uint32_param"]
               if protocol == "grpc" else settings["log_verbose_level"]) == 0
    index = client.get_model_repository_index(headers=admin)
    names = {m["name"] for m in index} if protocol == "http" else {m.name for m in index.models}
    assert {"fused_text", "e11_entity", "fusemoe"} <= names


def test_the_server_listens_on_loopback_only(server):
    import socket

    from ensemble.server import prepare_runtime

    command = server.command(prepare_runtime())
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert f"{flag}=127.0.0.1" in command
    import psutil

    # Not reachable on any other address of this machine, while a listener on every address
    # is (so the check can see an exposed port).
    others = sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                     if a.family == socket.AF_INET and not a.address.startswith("127.")})
    if not others:
        pytest.skip("this machine has no IPv4 address besides loopback to connect from")
    with socket.socket() as exposed:
        exposed.bind(("0.0.0.0", 0))
        exposed.listen()
        for address in others:
            with socket.socket() as s:
                s.settimeout(1)
                assert s.connect_ex((address, exposed.getsockname()[1])) == 0, address
            for port in (server.ports.http, server.ports.grpc, server.ports.metrics):
                with socket.socket() as s:
                    s.settimeout(1)
                    assert s.connect_ex((address, port)) != 0, (address, port)
