"""Element Web: config.json points at the homeserver; the container is private."""

import json

import pulumi

from components.matrix.element import CONFIG_PATH, Element, ElementArgs, render_element_config


def test_config_names_the_homeserver_only_through_default_server_config():
    config = render_element_config("https://matrix.example.org/", "example.org")
    assert config["default_server_config"] == {
        "m.homeserver": {"base_url": "https://matrix.example.org/", "server_name": "example.org"}}
    # Element rejects default_server_config mixed with these.
    assert not {"default_server_name", "default_hs_url"} & set(config)
    assert config["disable_guests"] is True
    assert config["room_directory"]["servers"] == ["example.org"]


@pulumi.runtime.test
def test_element_uploads_its_config_and_publishes_nothing(recorded):
    element = Element("element", ElementArgs(network="net", homeserver_base_url="https://matrix.example.org/",
                                             server_name="example.org"))

    def check(_):
        (container,) = recorded.of_type("docker:index/container:Container")
        inputs = container.plain_inputs
        assert container.name == "element-container" and inputs["name"] == "element"
        assert container.parent == recorded.of_type("commstack:matrix:Element")[0].urn
        (upload,) = inputs["uploads"]
        assert upload["file"] == CONFIG_PATH
        assert json.loads(upload["content"]) == render_element_config("https://matrix.example.org/", "example.org")
        assert not inputs.get("ports")
        assert inputs["networksAdvanced"][0]["aliases"] == ["element"]
        assert inputs["restart"] == "unless-stopped" and inputs["healthcheck"]["tests"][0] == "CMD-SHELL"
        (image,) = recorded.of_type("docker:index/remoteImage:RemoteImage")
        assert image.plain_inputs["name"].startswith("vectorim/element-web:v")

    return element.container.id.apply(check)
