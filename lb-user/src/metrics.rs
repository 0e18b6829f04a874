//! `--metrics ADDR`: the Prometheus text exposition of the counters, per VIP and per path
//! traffic, path states, probe RTTs, transitions and reloads. A minimal HTTP/1.1 server: one
//! GET at a time per connection, anything else answered 404.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex},
};

use lb_common::Counter;
use log::warn;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use crate::{daemon::Shared, dataplane::PinDir, health::Health};

pub async fn serve(listener: TcpListener, pin: PinDir, shared: Arc<Mutex<Shared>>) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let pin = pin.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            // Read the request head (bounded).
            while len < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    conn.read(&mut buf[len..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
                    Ok(Ok(n)) => len += n,
                }
                if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ")
            {
                match render(&pin, &shared) {
                    Ok(body) => ("200 OK", body),
                    Err(e) => ("500 Internal Server Error", format!("# error: {e:#}\n")),
                }
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = conn.write_all(reply.as_bytes()).await {
                warn!("metrics: writing the answer: {e}");
            }
        });
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text: counters from the pinned maps, the rest from the daemon's model.
pub fn render(pin: &PinDir, shared: &Mutex<Shared>) -> anyhow::Result<String> {
    let maps = pin.open()?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP lb_packets_total Datapath packets by verdict, reason and event (see docs/DATAPATH.md)."
    );
    let _ = writeln!(out, "# TYPE lb_packets_total counter");
    for (c, v) in maps.counters()? {
        let _ = writeln!(
            out,
            "lb_packets_total{{counter=\"{}\"}} {v}",
            Counter::name(c)
        );
    }
    let sh = shared.lock().unwrap_or_else(|e| e.into_inner());
    let Some(model) = &sh.model else {
        return Ok(out);
    };

    let _ = writeln!(
        out,
        "# HELP lb_vip_packets_total Translated packets per VIP; in: toward the VM."
    );
    let _ = writeln!(out, "# TYPE lb_vip_packets_total counter");
    let _ = writeln!(out, "# TYPE lb_vip_bytes_total counter");
    for v in &model.config.vips {
        let key = crate::model::vip_key(v);
        let Some(id) = model.ids.vips.get(&key) else {
            continue;
        };
        let s = maps.vip_stats(*id)?;
        let service = crate::view::service_label(
            v.service.map(|s| s.protocol.name()),
            v.service.map(|s| s.port),
        );
        let labels = format!(
            "vip=\"{}\",service=\"{service}\",target=\"{}\"",
            v.address,
            escape(&v.target)
        );
        let _ = writeln!(
            out,
            "lb_vip_packets_total{{{labels},direction=\"in\"}} {}",
            s.in_packets
        );
        let _ = writeln!(
            out,
            "lb_vip_packets_total{{{labels},direction=\"out\"}} {}",
            s.out_packets
        );
        let _ = writeln!(
            out,
            "lb_vip_bytes_total{{{labels},direction=\"in\"}} {}",
            s.in_bytes
        );
        let _ = writeln!(
            out,
            "lb_vip_bytes_total{{{labels},direction=\"out\"}} {}",
            s.out_bytes
        );
    }
    let _ = writeln!(
        out,
        "# HELP lb_path_up 1 when the path is up and not disabled."
    );
    let _ = writeln!(out, "# TYPE lb_path_up gauge");
    let _ = writeln!(out, "# TYPE lb_path_disabled gauge");
    let _ = writeln!(out, "# TYPE lb_path_datapath_suspect gauge");
    let _ = writeln!(out, "# TYPE lb_path_probe_rtt_seconds gauge");
    let _ = writeln!(out, "# TYPE lb_path_transitions_total counter");
    let _ = writeln!(out, "# TYPE lb_path_probes_total counter");
    let _ = writeln!(out, "# TYPE lb_path_packets_total counter");
    let _ = writeln!(out, "# TYPE lb_path_bytes_total counter");
    for ((target, path), id) in &model.ids.paths {
        let Some(s) = model.paths.get(id) else {
            continue;
        };
        let labels = format!("target=\"{}\",path=\"{}\"", escape(target), escape(path));
        let up = s.health == Some(Health::Up) && !s.disabled;
        let _ = writeln!(out, "lb_path_up{{{labels}}} {}", u8::from(up));
        let _ = writeln!(out, "lb_path_disabled{{{labels}}} {}", u8::from(s.disabled));
        let _ = writeln!(
            out,
            "lb_path_datapath_suspect{{{labels}}} {}",
            u8::from(s.suspect)
        );
        if let Some(rtt) = s.rtt {
            let _ = writeln!(
                out,
                "lb_path_probe_rtt_seconds{{{labels}}} {}",
                rtt.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "lb_path_transitions_total{{{labels}}} {}",
            sh.transitions.get(id).copied().unwrap_or(0)
        );
        let _ = writeln!(
            out,
            "lb_path_probes_total{{{labels}}} {}",
            sh.probes.get(id).copied().unwrap_or(0)
        );
        let t = maps.path_stats(*id)?;
        let _ = writeln!(
            out,
            "lb_path_packets_total{{{labels},direction=\"in\"}} {}",
            t.in_packets
        );
        let _ = writeln!(
            out,
            "lb_path_packets_total{{{labels},direction=\"out\"}} {}",
            t.out_packets
        );
        let _ = writeln!(
            out,
            "lb_path_bytes_total{{{labels},direction=\"in\"}} {}",
            t.in_bytes
        );
        let _ = writeln!(
            out,
            "lb_path_bytes_total{{{labels},direction=\"out\"}} {}",
            t.out_bytes
        );
    }
    let _ = writeln!(out, "# TYPE lb_reloads_total counter");
    let _ = writeln!(out, "lb_reloads_total{{result=\"ok\"}} {}", sh.reloads);
    let _ = writeln!(
        out,
        "lb_reloads_total{{result=\"rejected\"}} {}",
        sh.reload_failures
    );
    Ok(out)
}
