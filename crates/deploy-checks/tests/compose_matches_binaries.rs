//! The compose files, the Dockerfile and prometheus.yml agree with what the
//! binaries accept: every environment variable is a setting the binary
//! documents in `--help`, every port is the binary's metrics port, every
//! health check hits a path the binary answers, and the binaries start with
//! exactly the compose environment.

use std::collections::BTreeMap;
use std::time::Duration;

use deploy_checks::binaries::{
    self, default_port, help, help_default_of, help_env_vars, service_binaries,
};
use deploy_checks::compose::{
    self, duration_secs, env_value, healthcheck_words, interpolate, scalar, strings,
};
use deploy_checks::read;
use serde_norway::Value;
use test_support::{free_port, RedisServer};

const FILES: [&str; 2] = ["docker-compose.yml", "docker-compose.minimal.yml"];

/// Variables read by something other than clap (tracing's filter).
const NOT_CLAP: [&str; 1] = ["RUST_LOG"];

/// (file, service name, service) for every service built from our Dockerfile.
fn platform_services(doc: &Value) -> Vec<(String, Value)> {
    compose::services(doc)
        .iter()
        .filter_map(|(name, svc)| {
            let target = svc.get("build")?.get("target")?;
            Some((scalar(name), svc.clone())).filter(|_| scalar(target) == scalar(name))
        })
        .collect()
}

#[test]
fn every_service_builds_its_own_dockerfile_target() {
    let dockerfile = read("docker/Dockerfile");
    for file in FILES {
        let doc = compose::load(file);
        for (name, svc) in compose::services(&doc) {
            let name = scalar(name);
            let Some(build) = svc.get("build") else {
                continue;
            };
            assert_eq!(
                scalar(&build["dockerfile"]),
                "docker/Dockerfile",
                "{file}: {name}"
            );
            assert_eq!(scalar(&build["context"]), ".", "{file}: {name}");
            let target = scalar(&build["target"]);
            assert_eq!(
                target, name,
                "{file}: service {name} must build the target of the same name"
            );
            assert!(
                dockerfile.contains(&format!(" AS {target}\n")),
                "docker/Dockerfile has no stage {target}"
            );
            assert!(
                default_port(&name).is_some(),
                "{file}: {name} is not a platform binary"
            );
        }
        let names: Vec<String> = platform_services(&doc)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(
            names.contains(&"dispatcher".to_owned())
                && names.contains(&"sandbox-runtime".to_owned())
        );
    }
}

#[test]
fn compose_env_vars_are_settings_the_binaries_accept() {
    let bins = service_binaries();
    for file in FILES {
        let doc = compose::load(file);
        for (name, svc) in platform_services(&doc) {
            let Some(bin) = bins.iter().find(|b| b.name == name) else {
                continue; // crate not in the workspace yet
            };
            let accepted = help_env_vars(&help(bin));
            for (var, _) in compose::environment(&svc) {
                assert!(
                    accepted.contains(&var) || NOT_CLAP.contains(&var.as_str()),
                    "{file}: service {name} sets {var}, which `{name} --help` does not list \
                     (accepted: {accepted:?})"
                );
            }
        }
    }
}

#[test]
fn ports_and_health_paths_match_the_binaries() {
    let bins = service_binaries();
    let prometheus: Value =
        serde_norway::from_str(&read("config/prometheus.yml")).expect("prometheus.yml is YAML");
    let dockerfile = read("docker/Dockerfile");
    for file in FILES {
        let doc = compose::load(file);
        for (name, svc) in platform_services(&doc) {
            let port = default_port(&name).expect("platform binary");
            // METRICS_PORT in compose is the contract's port...
            let env_port = env_value(&svc, "METRICS_PORT")
                .unwrap_or_else(|| panic!("{file}: {name} sets no METRICS_PORT"));
            assert_eq!(env_port, port.to_string(), "{file}: {name} METRICS_PORT");
            // ...and the binary's own default.
            if let Some(bin) = bins.iter().find(|b| b.name == name) {
                assert_eq!(
                    help_default_of(&help(bin), "METRICS_PORT").as_deref(),
                    Some(port.to_string().as_str()),
                    "{name} --help: default METRICS_PORT"
                );
            }
            // The health check asks that port for /health.
            let words = healthcheck_words(&svc);
            let url = format!("http://127.0.0.1:{port}/health");
            assert!(
                words.contains(&url),
                "{file}: {name} healthcheck must GET {url}; it runs {words:?}"
            );
            // Published or exposed container port is that port.
            let exposed: Vec<String> = strings(&svc, "expose");
            let published: Vec<String> = strings(&svc, "ports");
            let container_ports: Vec<String> = exposed
                .iter()
                .cloned()
                .chain(
                    published
                        .iter()
                        .map(|p| p.rsplit(':').next().unwrap_or(p).to_owned()),
                )
                .collect();
            assert!(
                container_ports.iter().all(|p| *p == port.to_string()),
                "{file}: {name} exposes/publishes {container_ports:?}, not {port}"
            );
            assert!(
                !container_ports.is_empty(),
                "{file}: {name} neither exposes nor publishes {port}"
            );
            // Host ports only on loopback.
            for p in &published {
                assert!(
                    p.starts_with("127.0.0.1:"),
                    "{file}: {name} publishes {p} beyond loopback"
                );
            }
        }
    }

    // Dockerfile stages: EXPOSE, METRICS_PORT and HEALTHCHECK agree; the
    // entrypoint is the stage's binary.
    for (name, port) in binaries::SERVICES {
        let stage = dockerfile
            .split("\nFROM ")
            .find(|s| {
                s.lines()
                    .next()
                    .is_some_and(|l| l.ends_with(&format!(" AS {name}")))
            })
            .unwrap_or_else(|| panic!("docker/Dockerfile: no stage {name}"));
        assert!(
            stage.contains(&format!("EXPOSE {port}")),
            "stage {name}: EXPOSE {port}"
        );
        assert!(
            stage.contains(&format!("METRICS_PORT={port}")),
            "stage {name}: ENV METRICS_PORT={port}"
        );
        assert!(
            stage.contains("HEALTHCHECK") && stage.contains(":${METRICS_PORT}/health"),
            "stage {name}: HEALTHCHECK on /health"
        );
        // The sandbox starts through docker/sandbox-entrypoint.sh, which
        // execs the binary as the output dir's owner.
        let entrypoint = if name == "sandbox-runtime" {
            let script = read("docker/sandbox-entrypoint.sh");
            assert!(
                script.contains("-- /usr/local/bin/sandbox-runtime \"$@\"")
                    && script.contains("exec /usr/local/bin/sandbox-runtime \"$@\""),
                "docker/sandbox-entrypoint.sh must exec the sandbox-runtime binary"
            );
            "sandbox-entrypoint".to_owned()
        } else {
            name.to_owned()
        };
        assert!(
            stage.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{entrypoint}\"]")),
            "stage {name}: ENTRYPOINT is /usr/local/bin/{entrypoint}"
        );
    }

    // Files the compose environment names inside the image are copied there.
    for (image_path, repo_file) in binaries::IMAGE_FILES {
        assert!(
            dockerfile.contains(&format!("{repo_file} {image_path}\n")),
            "docker/Dockerfile must COPY {repo_file} to {image_path}"
        );
        assert!(
            root_file_is_executable(repo_file),
            "{repo_file} must be executable"
        );
    }

    // Prometheus scrapes every replica of every service on its port.
    let jobs: BTreeMap<String, &Value> = prometheus["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .map(|j| (scalar(&j["job_name"]), j))
        .collect();
    for (name, port) in binaries::SERVICES {
        let job = jobs
            .get(name)
            .unwrap_or_else(|| panic!("prometheus.yml: no job {name}"));
        let sd = &job["dns_sd_configs"][0];
        assert_eq!(
            scalar(&sd["names"][0]),
            name,
            "job {name}: DNS name is the compose service"
        );
        assert_eq!(
            scalar(&sd["type"]),
            "A",
            "job {name}: one A record per replica"
        );
        assert_eq!(scalar(&sd["port"]), port.to_string(), "job {name}: port");
        assert_eq!(scalar(&job["metrics_path"]), "/metrics");
    }
}

fn root_file_is_executable(rel: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(deploy_checks::root().join(rel))
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[test]
fn binaries_start_with_the_compose_environment_and_answer_health() {
    let bins = service_binaries();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let task_file = dir.path().join("tasks.jsonl");
    std::fs::write(&task_file, "").expect("task file");
    for file in FILES {
        let doc = compose::load(file);
        for (name, svc) in platform_services(&doc) {
            let Some(bin) = bins.iter().find(|b| b.name == name) else {
                continue;
            };
            let port = free_port();
            let out = dir.path().join(format!("out-{name}"));
            let env = binaries::local_env(&svc, &redis.url(), &out, &task_file, port);
            let mut r = binaries::spawn(bin, &env, port, dir.path());
            let path = healthcheck_words(&svc)
                .iter()
                .find_map(|w| {
                    w.strip_prefix("http://127.0.0.1:")
                        .map(|rest| rest[rest.find('/').unwrap_or(0)..].to_owned())
                })
                .expect("health URL");
            // Health checks (nsjail / Chromium / Redis) can take a moment.
            let mut last = (0, String::new());
            let healthy = test_support::wait_until(Duration::from_secs(30), || {
                last = binaries::http_get(port, &path).unwrap_or((0, String::new()));
                last.0 == 200
            });
            assert!(
                healthy.is_ok(),
                "{file}: {name} with the compose environment did not answer 200 on {path}: last {:?}\nlog:\n{}",
                last,
                r.log_tail()
            );
            let body: serde_json::Value = serde_json::from_str(&last.1)
                .unwrap_or_else(|e| panic!("{name} {path} body is not JSON ({e}): {}", last.1));
            assert_eq!(body["status"], "healthy", "{name}: {body}");

            // SIGTERM: a clean exit well inside the compose stop_grace_period.
            let grace =
                duration_secs(&scalar(&svc["stop_grace_period"])).expect("stop_grace_period");
            r.child.signal(15);
            let code = r.child.wait_exit(Duration::from_secs(grace));
            assert_eq!(
                code,
                Some(0),
                "{file}: {name} did not exit 0 within {grace}s of SIGTERM\n{}",
                r.log_tail()
            );
        }
    }
}

#[test]
fn services_are_production_shaped() {
    for file in FILES {
        let doc = compose::load(file);
        let services = compose::services(&doc);
        for (name, svc) in services {
            let name = scalar(name);
            assert_eq!(
                scalar(&svc["restart"]),
                "unless-stopped",
                "{file}: {name} restart policy"
            );
            assert_eq!(
                scalar(&svc["logging"]["driver"]),
                "json-file",
                "{file}: {name} log rotation"
            );
            assert!(
                svc["logging"]["options"]["max-size"].is_string(),
                "{file}: {name} log max-size"
            );
            assert!(
                svc["logging"]["options"]["max-file"].is_string(),
                "{file}: {name} log max-file"
            );
            assert!(
                svc.get("healthcheck").is_some(),
                "{file}: {name} has no healthcheck"
            );
            assert!(
                svc.get("privileged").is_none(),
                "{file}: {name} must not be privileged"
            );
            let grace = duration_secs(&scalar(&svc["stop_grace_period"]))
                .unwrap_or_else(|| panic!("{file}: {name} stop_grace_period"));
            // Runtimes get their SHUTDOWN_GRACE_SECS plus a margin before SIGKILL.
            if let Some(g) = env_value(svc, "SHUTDOWN_GRACE_SECS") {
                let g: u64 = g.parse().expect("SHUTDOWN_GRACE_SECS is a number");
                assert!(
                    grace >= g + 10,
                    "{file}: {name} stop_grace_period {grace}s < SHUTDOWN_GRACE_SECS {g}s + 10s"
                );
            }
            if default_port(&name).is_some() {
                assert!(
                    grace >= 40,
                    "{file}: {name} stop_grace_period below the 30 s worker grace + margin"
                );
            }
            // depends_on waits for health (Prometheus excepted, see the file).
            if let Some(deps) = svc.get("depends_on").and_then(Value::as_mapping) {
                for (dep, cond) in deps {
                    let c = scalar(&cond["condition"]);
                    assert!(
                        c == "service_healthy" || (name == "prometheus" && c == "service_started"),
                        "{file}: {name} depends on {} with condition {c:?}",
                        scalar(dep)
                    );
                    assert!(
                        services.contains_key(dep),
                        "{file}: {name} depends on a missing service"
                    );
                }
            } else {
                assert!(
                    name == "redis" || name == "vllm",
                    "{file}: {name} has no depends_on"
                );
            }
            // No literal secrets.
            for (var, raw) in compose::environment(svc) {
                if var.contains("PASSWORD") || var.contains("KEY") || var.contains("TOKEN") {
                    assert!(raw.starts_with("${"), "{file}: {name} hard-codes {var}");
                }
            }
        }

        // Redis keeps queued tasks: AOF every second, never evicts.
        let redis_cmd = strings(&services["redis"], "command").join(" ");
        for want in [
            "--appendonly yes",
            "--appendfsync everysec",
            "--maxmemory-policy noeviction",
        ] {
            assert!(
                redis_cmd.contains(want),
                "{file}: redis command lacks {want}: {redis_cmd}"
            );
        }
        assert!(strings(&services["redis"], "volumes")
            .iter()
            .any(|v| v.ends_with(":/data")));

        // Dispatcher: task file read-only at TASK_FILE, output at OUTPUT_DIR.
        let d = &services["dispatcher"];
        let task_file = env_value(d, "TASK_FILE").expect("TASK_FILE");
        let vols = strings(d, "volumes");
        assert!(
            vols.iter()
                .any(|v| v == &format!("./tasks.jsonl:{task_file}:ro")),
            "{file}: dispatcher must mount ./tasks.jsonl read-only at {task_file}: {vols:?}"
        );
        for (name, svc) in platform_services(&doc) {
            let out = env_value(&svc, "OUTPUT_DIR").expect("OUTPUT_DIR");
            assert!(
                strings(&svc, "volumes")
                    .iter()
                    .any(|v| v == &format!("./output:{out}")),
                "{file}: {name} must mount ./output at OUTPUT_DIR={out}"
            );
            assert_eq!(
                env_value(&svc, "REDIS_URL").as_deref(),
                Some("redis://redis:6379")
            );
        }

        // Sandbox: exactly the privileges nsjail needs (docs/deploy.md).
        let s = &services["sandbox-runtime"];
        assert_eq!(
            strings(s, "cap_add"),
            ["SYS_ADMIN"],
            "{file}: sandbox cap_add"
        );
        assert_eq!(
            strings(s, "security_opt"),
            ["apparmor:unconfined"],
            "{file}: sandbox security_opt"
        );
        assert!(
            s["init"].as_bool() == Some(true),
            "{file}: sandbox init (reaps nsjail children)"
        );
    }

    // Runtimes scale in both files: a fixed host port would make a second
    // replica fail to start (`--scale sandbox-runtime=2`).
    for file in FILES {
        let doc = compose::load(file);
        for (name, svc) in compose::services(&doc) {
            let name = scalar(name);
            if name.ends_with("-runtime") {
                assert!(
                    svc.get("ports").is_none(),
                    "{file}: {name} must not publish host ports (replicas would clash)"
                );
            }
        }
    }
    // The minimal file publishes the dispatcher only.
    let minimal = compose::load("docker-compose.minimal.yml");
    let published: Vec<String> = compose::services(&minimal)
        .iter()
        .filter(|(_, svc)| svc.get("ports").is_some())
        .map(|(name, _)| scalar(name))
        .collect();
    assert_eq!(
        published,
        ["dispatcher"],
        "docker-compose.minimal.yml: services with host ports"
    );

    // Full stack specifics.
    let doc = compose::load("docker-compose.yml");
    let services = compose::services(&doc);
    for name in ["sandbox-runtime", "web-runtime"] {
        assert!(
            services[name]["deploy"]["replicas"].as_u64().is_some(),
            "{name} replicas"
        );
    }
    assert_eq!(
        services["sandbox-runtime"]["deploy"]["replicas"].as_u64(),
        Some(2)
    );
    let web = &services["web-runtime"];
    assert_eq!(env_value(web, "WEB_BLOCK_PRIVATE").as_deref(), Some("true"));
    assert!(env_value(web, "MAX_CONCURRENT").is_some());
    assert!(
        web.get("shm_size").is_some(),
        "web-runtime shm_size (Chromium)"
    );
    let vllm = &services["vllm"];
    assert_eq!(strings(vllm, "profiles"), ["llm"]);
    let model = interpolate(&strings(vllm, "command").join(" "));
    assert!(
        model.contains("Instruct"),
        "vLLM must serve an instruction-tuned chat model: {model}"
    );
    for name in ["sandbox-runtime", "web-runtime"] {
        assert_eq!(
            compose::environment(&services[name])
                .iter()
                .find(|(k, _)| k == "LLM_BASE_URL")
                .map(|(_, v)| v.as_str()),
            Some("${LLM_BASE_URL:-}"),
            "{name}: LLM_BASE_URL comes from .env"
        );
    }
    let pw = compose::environment(&services["grafana"])
        .into_iter()
        .find(|(k, _)| k == "GF_SECURITY_ADMIN_PASSWORD")
        .map(|(_, v)| v)
        .expect("grafana admin password");
    assert!(
        pw.starts_with("${GRAFANA_ADMIN_PASSWORD:?"),
        "grafana password must be required from .env"
    );
}
