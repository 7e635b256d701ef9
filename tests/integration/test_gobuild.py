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
            tag = images[entry["image"]].rpartition(":")[2].removesuffix(entry.get("tag_suffix", ""))
            expected = gobuild._module_version(tag)
            if "module_version" in entry:  # Prometheus: release 3.16.0 is module v0.316.0
                expected = gobuild._mapped_version(expected, entry["module_version"])
            assert programs[name].version == expected, name
    assert programs["prometheus"].version == "v0.{}{:02d}.{}".format(
        *map(int, images["prometheus"].rpartition(":v")[2].split(".")))


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


def test_a_tag_whose_system_library_is_missing_fails_with_the_apt_line(tmp_path, monkeypatch):
    monkeypatch.setenv("COMMSTACK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(gobuild.TAG_HEADERS, "libexample", (str(tmp_path / "example.h"), "libexample-dev"))
    program = gobuild.GoProgram(name="svc", module="example.org/svc", package="example.org/svc/cmd/svc",
                                version="v1.2.3", tags=("libexample",), cgo=True)
    try:
        gobuild.build(program)
    except gobuild.GoBuildError as err:
        assert "apt-get install -y libexample-dev" in str(err) and "example.h" in str(err)
    else:
        raise AssertionError("built without the library's header")
    assert not (tmp_path / "cache").exists()  # refused before anything was written


def test_every_program_is_built_stripped_and_without_local_paths():
    assert "-trimpath" in gobuild.BUILD_FLAGS and "-ldflags=-s -w" in gobuild.BUILD_FLAGS


def test_a_release_maps_to_its_module_version(tmp_path):
    (tmp_path / "images.yaml").write_text("prom: example.org/prom:v3.16.0\n")
    (tmp_path / "programs.yaml").write_text(
        "prom: {image: prom, module_version: 'v0.{major}{minor:02d}.{patch}', module: example.org/prom}\n")
    assert gobuild.programs(tmp_path / "programs.yaml", tmp_path / "images.yaml")["prom"].version == "v0.316.0"
    (tmp_path / "images.yaml").write_text("prom: example.org/prom:latest\n")
    try:
        gobuild.programs(tmp_path / "programs.yaml", tmp_path / "images.yaml")
    except gobuild.GoBuildError as err:
        assert "MAJOR.MINOR.PATCH" in str(err)
    else:
        raise AssertionError("a tag that is no release version must be refused")


def test_placeholders_go_into_a_writable_copy_of_the_module(tmp_path, monkeypatch):
    """Alertmanager's zip lacks ui/app/dist, which ui/web.go embeds: the copy gets placeholder files."""
    import json
    import subprocess

    module = tmp_path / "modcache" / "example.org" / "am@v0.35.0"
    (module / "ui").mkdir(parents=True)
    (module / "ui" / "web.go").write_text("package ui\n")
    for path in (module / "ui", module):
        path.chmod(0o555)  # the module cache is read-only
    (module / "ui" / "web.go").chmod(0o444)
    program = gobuild.GoProgram(name="am", module="example.org/am", package="example.org/am/cmd/am",
                                version="v0.35.0", placeholders=("ui/app/dist/elm/index.html",))
    monkeypatch.setattr(gobuild, "_run", lambda cmd, cwd, env: subprocess.CompletedProcess(
        cmd, 0, json.dumps({"Dir": str(module)}), ""))
    work = tmp_path / "work"
    work.mkdir()
    copy = gobuild._module_copy_with_placeholders(program, work, {})
    assert (copy / "ui" / "web.go").read_text() == "package ui\n"
    assert "placeholder" in (copy / "ui" / "app" / "dist" / "elm" / "index.html").read_text()
    for path in (module / "ui", module):
        path.chmod(0o755)  # let tmp_path clean up
