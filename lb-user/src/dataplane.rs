//! Loading the XDP object: maps sized, programs through the verifier, and the handles the
//! control plane, the CLI and the tests work with.

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, Xdp},
};
use lb_common::maps::{FLOWS, PROG_INGRESS, PROG_RETURN};

use crate::maps::Maps;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this build has no XDP object (bpf-linker was missing when it was built): run `cargo xtask setup`, then build again"
    )]
    NoObject,
    #[error("loading the XDP object")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("the XDP object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("map {name} has an unexpected type or layout")]
    MapType {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {map}: {op} failed")]
    MapOp {
        map: &'static str,
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot add interface {ifindex} to the redirect devmap")]
    TxPort {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("program {name} does not pass the verifier or cannot be loaded")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
}

/// How to load the object.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Capacity of the flow table (`None`: the object's default,
    /// [`lb_common::maps::FLOW_TABLE_SIZE`]).
    pub flow_table_size: Option<u32>,
}

/// The loaded datapath: both programs verified and loaded (not attached), and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    pub maps: Maps,
}

impl Dataplane {
    pub fn load(opts: &LoadOptions) -> Result<Self, Error> {
        let LoadOptions { flow_table_size } = opts;
        let object = crate::object()?;
        let mut loader = EbpfLoader::new();
        if let Some(size) = flow_table_size {
            loader.map_max_entries(FLOWS, *size);
        }
        let mut ebpf = loader.load(object).map_err(Error::Load)?;
        for name in [PROG_INGRESS, PROG_RETURN] {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram { name })?
                .try_into()
                .map_err(|source| Error::Program { name, source })?;
            prog.load()
                .map_err(|source| Error::Program { name, source })?;
        }
        let maps = Maps::take(&mut ebpf)?;
        Ok(Self { ebpf, maps })
    }

    /// The ingress (client-facing) program.
    pub fn ingress(&self) -> Result<&Xdp, Error> {
        self.program(PROG_INGRESS)
    }

    /// The return (path-facing) program.
    pub fn reverse(&self) -> Result<&Xdp, Error> {
        self.program(PROG_RETURN)
    }

    fn program(&self, name: &'static str) -> Result<&Xdp, Error> {
        self.ebpf
            .program(name)
            .ok_or(Error::MissingProgram { name })?
            .try_into()
            .map_err(|source| Error::Program { name, source })
    }
}
