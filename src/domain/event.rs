//! Event sets: the closed list of events one aggregate records, each with a stable stored type
//! name and a payload revision, and the [`event_set!`](crate::event_set) macro that declares one.
//!
//! Must not touch: any codec or store. Decoding goes through [`PayloadDecoder`], which the store
//! implements, so the domain names its event types without knowing how they are encoded.

use serde::{Serialize, de::DeserializeOwned};

/// Decodes one payload into a concrete event type. Implemented by the store's codec.
pub trait PayloadDecoder {
    /// Why a payload could not be decoded.
    type Error;

    /// Decodes the payload as `T`.
    fn decode<T: DeserializeOwned>(self) -> Result<T, Self::Error>;
}

/// The closed set of events of one aggregate.
///
/// Serializing a value writes only the event's own fields (the payload); its name is stored
/// beside it as the event type. Declare one with [`event_set!`](crate::event_set) rather than by
/// hand.
pub trait EventSet: Serialize + Clone + std::fmt::Debug + Send + Sync + 'static {
    /// The stored type name of this event. Renaming an event is a migration (an upcaster).
    fn event_type(&self) -> &'static str;

    /// The current payload revision of the event type `event_type`, or `None` if the set has no
    /// such event.
    fn revision_of(event_type: &str) -> Option<u32>;

    /// The current payload revision of this event.
    fn revision(&self) -> u32 {
        Self::revision_of(self.event_type()).unwrap_or(1)
    }

    /// Decodes a payload of the current revision of `event_type`; `None` if the set has no such
    /// event.
    fn decode<D: PayloadDecoder>(event_type: &str, decoder: D) -> Option<Result<Self, D::Error>>;

    /// Every event type in the set with its current revision, in declaration order.
    fn types() -> &'static [(&'static str, u32)];
}

/// Declares an aggregate's event set: one enum whose variants wrap the event structs of the same
/// name. Each event is stored under its struct name; `Name @ 2` declares that the current
/// payload revision of `Name` is 2 (the default is 1).
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// pub struct Planted { pub species: String }
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// pub struct Watered { pub millilitres: u32 }
///
/// nursery::event_set! {
///     /// What happens to a pot.
///     pub enum PotEvent { Planted, Watered @ 2 }
/// }
///
/// use nursery::domain::EventSet;
/// let event = PotEvent::from(Watered { millilitres: 250 });
/// assert_eq!(event.event_type(), "Watered");
/// assert_eq!(event.revision(), 2);
/// assert_eq!(PotEvent::revision_of("Planted"), Some(1));
/// assert_eq!(PotEvent::revision_of("Pruned"), None);
/// ```
#[macro_export]
macro_rules! event_set {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident $( @ $rev:literal )? ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, serde::Serialize)]
        #[serde(untagged)]
        $vis enum $name {
            $( $(#[$vmeta])* #[allow(missing_docs, reason = "the wrapped struct is documented")] $variant($variant), )+
        }

        impl $crate::domain::EventSet for $name {
            fn event_type(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => stringify!($variant), )+
                }
            }

            fn revision_of(event_type: &str) -> Option<u32> {
                match event_type {
                    $( stringify!($variant) => Some($crate::__event_revision!($($rev)?)), )+
                    _ => None,
                }
            }

            fn decode<D: $crate::domain::PayloadDecoder>(
                event_type: &str,
                decoder: D,
            ) -> Option<Result<Self, D::Error>> {
                match event_type {
                    $( stringify!($variant) => Some(decoder.decode::<$variant>().map(Self::$variant)), )+
                    _ => None,
                }
            }

            fn types() -> &'static [(&'static str, u32)] {
                &[ $( (stringify!($variant), $crate::__event_revision!($($rev)?)), )+ ]
            }
        }

        $(
            impl From<$variant> for $name {
                fn from(event: $variant) -> Self {
                    Self::$variant(event)
                }
            }
        )+
    };
}

/// The revision an `event_set!` variant declares: 1 unless `@ N` says otherwise.
#[doc(hidden)]
#[macro_export]
macro_rules! __event_revision {
    () => {
        1u32
    };
    ($rev:literal) => {
        $rev
    };
}
