//! The maths the CPU kernels share (flex's fused layers, AdamW's update, stage one's top-k):
//! `e^x` and the normal CDF and density as branch-free polynomials, sigmoid, sums and maxima
//! in eight lanes, and [`multiversion!`], which compiles a kernel for baseline x86-64, AVX2 +
//! FMA and AVX-512 and picks the widest the CPU has at run time. Plain f32 loops that the
//! compiler vectorises; no intrinsics, no libm calls.

/// Compiles each kernel three times, for the baseline x86-64, AVX2 + FMA and AVX-512, and
/// picks the widest the CPU has at run time (the kernels are plain loops that the compiler
/// vectorises for the features it may use).
macro_rules! multiversion {
    ($($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block)*) => {$(
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx512($($arg: $ty),*) {
                    imp($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vl") {
                    // SAFETY: the CPU has the features `avx512` was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                fn avx2($($arg: $ty),*) {
                    imp($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    )*};
}
pub(crate) use multiversion;

/// `sum(f(i))` for `i < n`, in eight lanes so that the compiler may vectorise it.
#[inline(always)]
pub(crate) fn lanes_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let full = n - n % 8;
    for i in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(i + l);
        }
    }
    let mut total = acc.iter().sum::<f32>();
    for i in full..n {
        total += f(i);
    }
    total
}

/// `K` sums `sum(f(i)[j])` for `i < n` in one pass, each in eight lanes like [`lanes_sum`].
#[inline(always)]
#[allow(clippy::needless_range_loop)] // lane `l` of every accumulator: the loop the compiler vectorises
pub(crate) fn lanes_sums<const K: usize>(n: usize, f: impl Fn(usize) -> [f32; K]) -> [f32; K] {
    let mut acc = [[0f32; 8]; K];
    let full = n - n % 8;
    for i in (0..full).step_by(8) {
        for l in 0..8 {
            let v = f(i + l);
            for j in 0..K {
                acc[j][l] += v[j];
            }
        }
    }
    let mut total: [f32; K] = std::array::from_fn(|j| acc[j].iter().sum::<f32>());
    for i in full..n {
        let v = f(i);
        for j in 0..K {
            total[j] += v[j];
        }
    }
    total
}

/// `max(f(i))` for `i < n` (`n > 0`), in eight lanes.
#[inline(always)]
pub(crate) fn lanes_max(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let full = n - n % 8;
    for i in (0..full).step_by(8) {
        for (l, a) in acc.iter_mut().enumerate() {
            let v = f(i + l);
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = acc.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for i in full..n {
        let v = f(i);
        m = if v > m { v } else { m };
    }
    m
}

/// `e^x` to about 2 ulp, branch-free: `x = n ln2 + r` with `|r| <= ln2 / 2`, a degree-6
/// Taylor polynomial for `e^r` (truncation `r^7 / 7! < 1.3e-7` relative) and `2^n` built in
/// the exponent bits. Below -87 it returns 0 (the true value is under 1.7e-38).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts (the first exact in a few bits) so that `x - n ln2` loses nothing.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n as an integer from `t`'s low mantissa bits (integer arithmetic, which vectorises;
    // `n as i32` saturates and does not), then 2^n from its exponent bits.
    let ni = t.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(ni.wrapping_add(127) << 23);
    if x < -87.0 { 0.0 } else { p * scale }
}

/// `(Phi(x), phi(x))`, the standard normal CDF and density, with erf from Abramowitz &
/// Stegun 7.1.26 (absolute error under 1.5e-7): `erf(a) = 1 - t (a1 + t (a2 + ..)) e^{-a^2}`,
/// `t = 1 / (1 + p a)`, for `a = |x| / sqrt 2`. The `e^{-a^2} = e^{-x^2/2}` is the density's too.
#[inline(always)]
pub(crate) fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let a = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let e = exp(-a * a);
    let erf_abs = 1.0 - poly * e;
    let erf = f32::copysign(erf_abs, x);
    (0.5 * (1.0 + erf), INV_SQRT_2PI * e)
}

#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Stage one's `e^x` for `x <= 0`: `2^n * e^t` with `n = round(x log2 e)`, `t = x - n ln 2`
/// in `[-ln2/2, ln2/2]`, and `e^t` by its degree-7 Taylor polynomial, whose remainder
/// `(ln2/2)^8 / 8! < 5e-9` is below f32 rounding. Inputs below -87 are clamped there (`e^-87`
/// ~ 1.6e-38, the smallest normal range); callers that need smaller values (the tail) detect
/// the clamp and recompute in f64.
///
/// Kept apart from [`exp`], though both are the same kind of polynomial: they differ in the
/// last bits for about 3% of the inputs in `[-87, 0]` (`exp` splits `ln 2` in two parts and
/// stays within 3 ulp of the rounded true value there; with the single constant here the
/// error grows with `|n|`, to 68 ulp near -72), and below -87, where `exp` returns 0. The
/// soft labels in a cache are this function's results to the bit, so switching would make
/// the caches of the same teacher and data differ between builds.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding and subtracting rounds to an integer
    let x = if x > -87.0 { x } else { -87.0 };
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    // The integer n sits in the low mantissa bits of `shifted`: no float->int conversion.
    let n_int = (shifted.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let t = x - n * std::f32::consts::LN_2;
    let p =
        1.0 + t * (1.0 + t * (1.0 / 2.0 + t * (1.0 / 6.0 + t * (1.0 / 24.0 + t * (1.0 / 120.0 + t * (1.0 / 720.0 + t * (1.0 / 5040.0)))))));
    f32::from_bits((n_int.wrapping_add(127) as u32) << 23) * p
}
