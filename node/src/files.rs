//! `kadrtc send` and `kadrtc recv`: files over their own data channels.

use crate::output::Output;
use crate::{RecvArgs, SendArgs};

pub async fn run_send(_args: SendArgs, _out: &Output) -> anyhow::Result<()> {
    anyhow::bail!("kadrtc send is not built yet")
}

pub async fn run_recv(_args: RecvArgs, _out: &Output) -> anyhow::Result<()> {
    anyhow::bail!("kadrtc recv is not built yet")
}
