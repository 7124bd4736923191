//! Sequences with a protocol bound, decoded without trusting the declared length: at most
//! `MAX` elements, and never more capacity reserved than that. (serde's own `Vec` reserves
//! up to 1 MiB from the declared length before it finds the bytes missing.)

use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

pub fn vec<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T, const MAX: usize>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for V<T, MAX> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a sequence of at most {MAX} elements")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let declared = seq.size_hint().unwrap_or(0);
            if declared > MAX {
                return Err(A::Error::custom(format_args!("{declared} elements exceed the limit of {MAX}")));
            }
            let mut out = Vec::with_capacity(declared);
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(A::Error::custom(format_args!("more than {MAX} elements")));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V::<T, MAX>(PhantomData))
}
