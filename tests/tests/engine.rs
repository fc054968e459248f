//! Golden tests of the usmol image on a docker engine: `docker load` of
//! `usmol-docker.tar`, then `docker run usmol:latest ...` the way the README
//! shows it: `--network none`, no privileges, no extra flags. Slow (each
//! container boots a guest kernel and dockerd), so they run only with
//! USMOL_SLOW_TESTS=1; without an engine answering `docker info` they skip
//! loudly (CI starts one).

mod common;

use common::engine::{UsmolImage, engine_answers, open_dir, usmol, vol};
use common::{hello_image, hello_text, tool_image};

/// Seeds the inner image cache through the state volume, then runs the
/// nested hello-world from it.
fn hello_through_the_state_volume(user: Option<&str>) {
    let _image = UsmolImage::acquire();
    let state = open_dir();
    let scratch = tempfile::tempdir().unwrap();
    let hello = std::fs::read(hello_image(scratch.path())).unwrap();
    let mount = vol(state.path(), "/var/lib/usmol");
    let mut flags = vec!["-v", mount.as_str()];
    if let Some(user) = user {
        flags.extend(["--user", user]);
    }
    usmol(&flags, &["docker", "load"], Some(&hello))
        .expect_code(0)
        .expect_stdout_contains("hello-world:latest");
    assert!(
        state.path().join("docker.ext4").is_file(),
        "no docker.ext4 in the state volume {}",
        state.path().display()
    );
    let out = usmol(&flags, &["docker", "run", "--rm", "hello-world"], None);
    out.expect_code(0)
        .expect_stdout_contains("Hello from Docker!");
    assert_eq!(
        out.stdout_text(),
        hello_text(),
        "stdout carries more than the hello output\n{out}"
    );
}

#[test]
fn hello_world_through_the_state_volume() {
    if !engine_answers("hello_world_through_the_state_volume") {
        return;
    }
    hello_through_the_state_volume(None);
}

#[test]
fn hello_world_through_the_state_volume_as_user_65534() {
    if !engine_answers("hello_world_through_the_state_volume_as_user_65534") {
        return;
    }
    hello_through_the_state_volume(Some("65534"));
}

#[test]
fn volumes_are_shared_and_read_only_stays_read_only() {
    if !engine_answers("volumes_are_shared_and_read_only_stays_read_only") {
        return;
    }
    let _image = UsmolImage::acquire();
    let work = open_dir();
    let ro = open_dir();
    let dir = work.path().display().to_string();
    std::fs::write(work.path().join("from-host.txt"), "written on the host\n").unwrap();
    std::fs::write(ro.path().join("ro.txt"), "read-only content\n").unwrap();
    let work_mount = vol(work.path(), &dir);
    let ro_mount = format!("{}:ro", vol(ro.path(), "/ro"));
    let script = "set -e
cat from-host.txt
echo 'written in the guest' > from-guest.txt
cat /ro/ro.txt
if (echo x > /ro/new.txt) 2>/dev/null; then echo 'read-only volume was writable'; exit 3; fi
echo read-only-ok";
    let out = usmol(
        &[
            "-e",
            "USMOL_DOCKER=0",
            "-v",
            &work_mount,
            "-w",
            &dir,
            "-v",
            &ro_mount,
        ],
        &["sh", "-c", script],
        None,
    );
    out.expect_code(0);
    assert_eq!(
        out.stdout_text(),
        "written on the host\nread-only content\nread-only-ok\n",
        "{out}"
    );
    let guest_file = work.path().join("from-guest.txt");
    assert_eq!(
        std::fs::read_to_string(&guest_file)
            .unwrap_or_else(|e| panic!("{}: {e}\n{out}", guest_file.display())),
        "written in the guest\n"
    );
    assert!(
        !ro.path().join("new.txt").exists(),
        "a file appeared in the read-only volume\n{out}"
    );
}

#[test]
fn three_levels_append_to_one_file() {
    if !engine_answers("three_levels_append_to_one_file") {
        return;
    }
    let _image = UsmolImage::acquire();
    let work = open_dir();
    let dir = work.path().display().to_string();
    tool_image(work.path());
    let lines = work.path().join("hello.txt");
    std::fs::write(&lines, "hello from the host\n").unwrap();
    let mount = vol(work.path(), &dir);
    let script = "set -e
echo 'hello from usmol' >> hello.txt
docker load -q -i tool.tar >/dev/null
docker run --rm -v \"$PWD:/shared\" usmol-tool:latest append /shared/hello.txt 'hello from the nested container'";
    let out = usmol(&["-v", &mount, "-w", &dir], &["sh", "-c", script], None);
    out.expect_code(0);
    let text = std::fs::read_to_string(&lines).unwrap();
    assert_eq!(
        text, "hello from the host\nhello from usmol\nhello from the nested container\n",
        "{out}"
    );
}

#[test]
fn compose_services_share_a_named_volume() {
    if !engine_answers("compose_services_share_a_named_volume") {
        return;
    }
    let _image = UsmolImage::acquire();
    let work = open_dir();
    let dir = work.path().display().to_string();
    tool_image(work.path());
    std::fs::create_dir(work.path().join("out")).unwrap();
    let message = format!("written by the writer service ({})", std::process::id());
    let compose = format!(
        r#"services:
  writer:
    image: usmol-tool:latest
    command: ["write", "/shared/message", "{message}"]
    volumes:
      - shared:/shared
  reader:
    image: usmol-tool:latest
    command: ["copy", "/shared/message", "/out/message"]
    volumes:
      - shared:/shared
      - ./out:/out
    depends_on:
      writer:
        condition: service_completed_successfully
volumes:
  shared: {{}}
"#
    );
    std::fs::write(work.path().join("compose.yaml"), compose).unwrap();
    let script = "set -e
docker load -q -i tool.tar >/dev/null
if docker compose version >/dev/null 2>&1; then dc='docker compose'; else dc=docker-compose; fi
$dc version
$dc -p golden up --no-color
$dc -p golden down -v";
    let mount = vol(work.path(), &dir);
    let out = usmol(&["-v", &mount, "-w", &dir], &["sh", "-c", script], None);
    out.expect_code(0);
    let copied = work.path().join("out/message");
    let got = std::fs::read_to_string(&copied)
        .unwrap_or_else(|e| panic!("the reader wrote no {}: {e}\n{out}", copied.display()));
    assert_eq!(got, format!("{message}\n"), "{out}");
}
