//! `ferry-stage DATA GIB [CHUNK_KIB]`: writes GIB gibibytes of staged uploads (1 GiB each,
//! chunks of CHUNK_KIB KiB, 8192 by default; every chunk durable and recorded) into the data directory DATA and leaves it as a crash
//! would, for bench/restart.sh. Owner `bench`; a token for it must exist or be added after.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let data = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: ferry-stage DATA GIB"))?,
    );
    let gib: u64 = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: ferry-stage DATA GIB"))?
        .parse()?;
    let chunk_kib: u64 = args.next().map_or(Ok(8192), |c| c.parse())?;
    let staged = ferry_tests::stage::stage_uploads(&data, "bench", gib, 1 << 30, chunk_kib << 10);
    println!(
        "staged {} uploads of 1 GiB in {}",
        staged.len(),
        data.display()
    );
    Ok(())
}
