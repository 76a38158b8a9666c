//! `ferry-stage DATA GIB`: writes GIB gibibytes of staged uploads (1 GiB each, 8 MiB chunks,
//! every chunk durable and recorded) into the data directory DATA and leaves it as a crash
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
    let staged = ferry_tests::stage::stage_uploads(&data, "bench", gib, 1 << 30, 8 << 20);
    println!(
        "staged {} uploads of 1 GiB in {}",
        staged.len(),
        data.display()
    );
    Ok(())
}
