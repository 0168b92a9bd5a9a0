use clap::Parser;

use capturelink::config::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Cli::parse().into_settings();
    settings.validate().map_err(anyhow::Error::msg)?;
    capturelink::telemetry::init(settings.log_format);
    let running = capturelink::app::start(settings).await?;
    running.print_banner();
    running.serve_until_signal().await
}
