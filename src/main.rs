use clap::Parser;

use capturelink::config::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    capturelink::ops::run(Cli::parse().into_command()).await
}
