"""Address settings -> gRPC targets: one address is dialled as written (as before), a dns:///
name or a list of IP addresses is spread round robin, and what gRPC cannot dial is refused
with the reason; the detector's and trainer's `embedder` settings take every form."""

import json

import pytest
from pydantic import ValidationError

from oddity.common.clients import RetryPolicy
from oddity.common.clients.targets import AddressError, Target, grpc_target, normalize
from oddity.detector.settings import DetectorSettings
from oddity.trainer.settings import TrainerSettings


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("127.0.0.1:50051", Target("127.0.0.1:50051", balanced=False)),
        ("oddity-embedder:50051", Target("oddity-embedder:50051", balanced=False)),
        ("[::1]:50051", Target("[::1]:50051", balanced=False)),
        ("dns:50051", Target("dns:50051", balanced=False)),  # a host named dns
        ("dns:///oddity-embedder-replicas:50051", Target("dns:///oddity-embedder-replicas:50051", balanced=True)),
        ("ipv4:10.0.0.5:50051,10.0.0.6:50051", Target("ipv4:10.0.0.5:50051,10.0.0.6:50051", balanced=True)),
        ("10.0.0.5:50051, 10.0.0.6:50052", Target("ipv4:10.0.0.5:50051,10.0.0.6:50052", balanced=True)),
        ("[::1]:50051,[::1]:50052", Target("ipv6:[::1]:50051,[::1]:50052", balanced=True)),
        ('["10.0.0.5:50051", "10.0.0.6:50051"]', Target("ipv4:10.0.0.5:50051,10.0.0.6:50051", balanced=True)),
        ("127.0.0.1:50051,", Target("127.0.0.1:50051", balanced=False)),
    ],
)
def test_targets(address, target):
    assert grpc_target(address) == target


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("embedder-a:50051,embedder-b:50051", "takes IP addresses; .* dns:///name:port"),
        ("10.0.0.5:50051,[::1]:50051", "mixes IPv4 and IPv6"),
        ("10.0.0.5,10.0.0.6:50051", r"'10.0.0.5' is not host:port"),
        ("10.0.0.5:0,10.0.0.6:50051", r"'10.0.0.5:0' is not host:port"),
        ("10.0.0.6:50051,dns:///a:1", "not targets with a scheme"),
        (" , ", "no address given"),
    ],
)
def test_undiallable_addresses_are_refused_with_the_reason(address, reason):
    with pytest.raises(AddressError, match=reason):
        grpc_target(address)


def test_a_list_setting_becomes_one_comma_separated_string():
    assert normalize(["10.0.0.5:50051", "10.0.0.6:50051"]) == "10.0.0.5:50051,10.0.0.6:50051"
    assert normalize("") == ""


def test_the_embedder_settings_take_lists_and_refuse_names_in_them(monkeypatch):
    assert TrainerSettings(embedder=["127.0.0.1:1", "127.0.0.1:2"]).embedder == "127.0.0.1:1,127.0.0.1:2"
    assert TrainerSettings().embedder == "127.0.0.1:50051"
    assert DetectorSettings().embedder == ""
    monkeypatch.setenv("ODDITY_DETECTOR_EMBEDDER", json.dumps(["127.0.0.1:1", "127.0.0.1:2"]))
    assert DetectorSettings().embedder == "127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(ValidationError, match="give that one name as dns:///name:port"):
        DetectorSettings(embedder="a:1,b:2")


def test_balanced_service_config_picks_round_robin_and_keeps_the_retry_policy():
    service = "oddity.v1.Embedder"
    balanced = json.loads(RetryPolicy().service_config(service, balanced=True))
    single = json.loads(RetryPolicy().service_config(service))
    assert balanced["loadBalancingConfig"] == [{"round_robin": {}}]
    assert "loadBalancingConfig" not in single
    assert balanced["methodConfig"] == single["methodConfig"]


def test_with_tls_an_address_list_is_refused_and_a_dns_name_is_taken(tmp_path):
    ca = tmp_path / "ca.crt"  # calls use TLS once a CA is set; the settings do not read it
    with pytest.raises(ValidationError, match="with TLS each server is checked against the name dialled"):
        TrainerSettings(embedder="10.0.0.5:50051,10.0.0.6:50051", tls_ca_file=ca)
    with pytest.raises(ValidationError, match="give one DNS name that the certificates carry"):
        DetectorSettings(embedder="ipv4:10.0.0.5:50051,10.0.0.6:50051", tls_ca_file=ca)
    target = "dns:///oddity-embedder-replicas:50051"
    assert DetectorSettings(embedder=target, tls_ca_file=ca).embedder == target
    assert TrainerSettings(embedder="10.0.0.5:50051", tls_ca_file=ca).embedder == "10.0.0.5:50051"
