"""The Go builder takes each program's version from the pinned image, so bumping a tag in
configs/images.yaml changes what CI builds and boots."""

import yaml

from tests.integration import gobuild


def test_versions_come_from_the_pinned_images():
    images = yaml.safe_load(gobuild.IMAGES_FILE.read_text())
    entries = yaml.safe_load(gobuild.PROGRAMS_FILE.read_text())
    programs = gobuild.programs()
    assert set(programs) == set(entries)
    for name, entry in entries.items():
        if "image" in entry:
            tag = images[entry["image"]].rpartition(":")[2]
            assert programs[name].version.lstrip("v") == tag.lstrip("v"), name


def test_a_bumped_tag_changes_the_build_and_its_cache_key(tmp_path, monkeypatch):
    (tmp_path / "images.yaml").write_text("svc: example.org/svc:1.2.3\n")
    (tmp_path / "programs.yaml").write_text(
        "svc: {image: svc, module: example.org/svc, package: example.org/svc/cmd/svc, tags: [a, b]}\n"
        "tool: {version: 0.4.0, module: example.org/tool}\n")
    monkeypatch.setenv("COMMSTACK_CACHE", str(tmp_path / "cache"))
    progs = gobuild.programs(tmp_path / "programs.yaml", tmp_path / "images.yaml")
    assert progs["svc"].version == "v1.2.3"
    assert progs["tool"].version == "v0.4.0"
    assert gobuild.cached_path(progs["svc"]) == tmp_path / "cache" / "go" / "svc" / "v1.2.3+a,b" / "svc"
    (tmp_path / "images.yaml").write_text("svc: example.org/svc:1.2.4\n")
    bumped = gobuild.programs(tmp_path / "programs.yaml", tmp_path / "images.yaml")["svc"]
    assert gobuild.cached_path(bumped) != gobuild.cached_path(progs["svc"])
