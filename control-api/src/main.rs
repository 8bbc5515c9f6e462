use std::process::ExitCode;

use clap::Parser;
use edgemesh_control_api::{Application, Config};
use edgemesh_core::shutdown_signal;

#[tokio::main]
async fn main() -> ExitCode {
    edgemesh_core::telemetry::init();
    let config = Config::parse();
    let app = match Application::build(&config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "failed to start");
            eprintln!("edgemesh-control-api: {e:#}");
            return ExitCode::from(1);
        }
    };
    app.run_until_stopped(shutdown_signal()).await;
    ExitCode::SUCCESS
}
