//! `kadrtc offer` and `kadrtc answer`: signaling by copy and paste, with no network.

use crate::output::Output;
use crate::OfferArgs;

pub async fn run_offer(_args: OfferArgs, _out: &Output) -> anyhow::Result<()> {
    anyhow::bail!("kadrtc offer is not built yet")
}

pub async fn run_answer(_args: OfferArgs, _out: &Output) -> anyhow::Result<()> {
    anyhow::bail!("kadrtc answer is not built yet")
}
