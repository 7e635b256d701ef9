"""The offline engine itself: emulated providers, secrecy and options are faithful."""

import asyncio
import pulumi
import pulumi_random as random
import pulumi_tls as tls

from commstack.devtools import offline


@pulumi.runtime.test
def test_random_password_result_is_a_fresh_secret_of_requested_shape(recorded):
    password = random.RandomPassword("p", length=40, special=False, opts=pulumi.ResourceOptions(protect=True))

    def check(args):
        result, = args
        assert len(result) == 40 and result.isalnum()
        reg = recorded.named("p")
        assert reg.protect is True
        assert offline.is_secret(reg.outputs["result"])

    return pulumi.Output.all(password.result).apply(check)


@pulumi.runtime.test
def test_result_output_is_secret(recorded):
    password = random.RandomPassword("p2", length=8)

    return offline.expect_secret(password.result)


@pulumi.runtime.test
def test_plain_output_is_not_secret(recorded):
    pet = random.RandomId("id", byte_length=4)

    return offline.expect_secret(pet.hex, secret=False)


@pulumi.runtime.test
def test_tls_key_and_self_signed_certificate_are_real(recorded):
    from cryptography import x509

    key = tls.PrivateKey("k", algorithm="ECDSA", ecdsa_curve="P256")
    cert = tls.SelfSignedCert("c", private_key_pem=key.private_key_pem, dns_names=["a.example.org"],
                              subject=tls.SelfSignedCertSubjectArgs(common_name="a.example.org"),
                              validity_period_hours=48, allowed_uses=["server_auth"])

    def check(pem):
        parsed = x509.load_pem_x509_certificate(pem.encode())
        sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["a.example.org"]

    return cert.cert_pem.apply(check)


def test_stack_config_reads_committed_file():
    config = offline.stack_config("dev")
    assert config["commstack:domain"] == "commstack.localhost"
    assert set(offline.committed_stacks()) >= {"dev", "prod"}


def test_component_mocks_install_after_an_asyncio_run_left_no_current_loop():
    # A test worker runs many files in one process; asyncio.run() elsewhere leaves the main thread
    # without a current loop, and set_mocks used to fail there ("no current event loop").
    asyncio.run(asyncio.sleep(0))
    offline.install_component_mocks()
    loop = asyncio.get_event_loop_policy().get_event_loop()
    assert not loop.is_closed()
