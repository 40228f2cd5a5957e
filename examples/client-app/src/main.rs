//! `kv-client`: put and get keys of a `kv` machine from the command line, through
//! `wraft-client` alone.
//!
//! ```text
//! kv-client --endpoints 127.0.0.1:7001,127.0.0.1:7002 --certs demo/certs --identity admin \
//!     [--machine kv] put KEY VALUE | get KEY
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use wraft_client::{Client, ClientOptions, PeerAddr};

const USAGE: &str = "usage: kv-client --endpoints ADDR[,ADDR...] --certs DIR --identity NAME \
                     [--machine NAME] (put KEY VALUE | get KEY)";

struct Args {
    endpoints: Vec<PeerAddr>,
    certs: PathBuf,
    identity: String,
    machine: String,
    action: Vec<String>,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut endpoints, mut certs, mut identity) = (None, None, None);
    let mut machine = "kv".to_owned();
    let mut action = Vec::new();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--endpoints" => {
                let list = value("--endpoints")?;
                let parsed: Result<Vec<PeerAddr>, _> = list.split(',').map(str::parse).collect();
                endpoints = Some(parsed.map_err(|e| format!("--endpoints {list:?}: {e}"))?);
            }
            "--certs" => certs = Some(PathBuf::from(value("--certs")?)),
            "--identity" => identity = Some(value("--identity")?),
            "--machine" => machine = value("--machine")?,
            _ => action.push(a),
        }
    }
    Ok(Args {
        endpoints: endpoints.ok_or("--endpoints is required")?,
        certs: certs.ok_or("--certs is required")?,
        identity: identity.ok_or("--identity is required")?,
        machine,
        action,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kv-client: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse(std::env::args().skip(1)).map_err(|e| format!("{e}\n{USAGE}"))?;
    let opts = ClientOptions::from_cert_dir(args.endpoints, &args.certs, &args.identity)?;
    let client = Client::connect(opts).await?;
    match args.action.as_slice() {
        [op, key, value] if op == "put" => {
            let index = wraft_example_client::put(&client, &args.machine, key, value).await?;
            println!("stored at index {index}");
        }
        [op, key] if op == "get" => {
            match wraft_example_client::get(&client, &args.machine, key).await? {
                Some(v) => println!("{v}"),
                None => println!("(no value)"),
            }
        }
        _ => return Err(USAGE.into()),
    }
    Ok(())
}
