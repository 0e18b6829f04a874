//! Prints what the verifier spent on each program of the built object: `cargo run -p lb-user
//! --example verifier_stats` (root). Loads with private maps; attaches nothing.
use std::time::Instant;

use aya::{
    EbpfLoader,
    programs::{SchedClassifier, Xdp},
};

fn main() -> anyhow::Result<()> {
    let mut ebpf = EbpfLoader::new().load(lb_user::datapath::object()?)?;
    let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
    for name in names {
        let prog = ebpf.program_mut(&name).expect("listed");
        let t = Instant::now();
        let info = if let Ok(p) = <&mut Xdp>::try_from(&mut *prog) {
            p.load()?;
            p.info()?
        } else {
            let p: &mut SchedClassifier = prog.try_into()?;
            p.load()?;
            p.info()?
        };
        println!(
            "{name:16} {:>8} verified insns {:>6} insns {:>6.0} ms",
            info.verified_instruction_count().unwrap_or(0),
            info.size_translated().unwrap_or(0) / 8,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
