//! The contract's fixed vocabulary: damage areas, shot angles and guidance hints.
//!
//! Left and right are the vehicle's own sides, as seen from the driver's seat. The ids are stable
//! (outside clients are built against them); labels are translated by the pages.

/// Which part of the vehicle (or which document) a shot shows.
pub const AREAS: &[&str] = &[
    "front_bumper",
    "front_grille",
    "hood",
    "headlight_left",
    "headlight_right",
    "fog_light_front_left",
    "fog_light_front_right",
    "front_license_plate",
    "windshield",
    "fender_front_left",
    "fender_front_right",
    "mirror_left",
    "mirror_right",
    "door_front_left",
    "door_front_right",
    "door_rear_left",
    "door_rear_right",
    "window_front_left",
    "window_front_right",
    "window_rear_left",
    "window_rear_right",
    "rocker_panel_left",
    "rocker_panel_right",
    "pillar_left",
    "pillar_right",
    "quarter_panel_rear_left",
    "quarter_panel_rear_right",
    "wheel_front_left",
    "wheel_front_right",
    "wheel_rear_left",
    "wheel_rear_right",
    "fuel_door",
    "rear_bumper",
    "trunk_lid_tailgate",
    "taillight_left",
    "taillight_right",
    "rear_windshield",
    "rear_license_plate",
    "roof",
    "undercarriage",
    "other_exterior",
    "dashboard",
    "odometer",
    "vin",
    "front_seats",
    "rear_seats",
    "trunk_interior",
    "engine_bay",
    "registration_document",
    "scene_overview",
    "overview",
];

/// From where the shot is taken.
pub const ANGLES: &[&str] = &[
    "front",
    "front_left_45",
    "left",
    "rear_left_45",
    "rear",
    "rear_right_45",
    "right",
    "front_right_45",
    "close_up",
    "detail_oblique",
    "top_down",
    "interior",
    "document",
];

/// Framing hints an agent can show over the customer's camera view.
pub const HINTS: &[&str] = &[
    "closer",
    "farther",
    "left",
    "right",
    "up",
    "down",
    "hold_steady",
    "more_light",
    "less_glare",
];

/// The `claim_default` checklist: (area, angle) in the order the customer is guided through them.
/// Close-ups of the damaged parts are added by the agent during the call.
pub const CLAIM_DEFAULT: &[(&str, &str)] = &[
    ("vin", "document"),
    ("odometer", "interior"),
    ("overview", "front_left_45"),
    ("overview", "front_right_45"),
    ("overview", "rear_left_45"),
    ("overview", "rear_right_45"),
    ("front_license_plate", "front"),
    ("rear_license_plate", "rear"),
];

pub fn is_area(s: &str) -> bool {
    AREAS.contains(&s)
}

pub fn is_angle(s: &str) -> bool {
    ANGLES.contains(&s)
}

pub fn is_hint(s: &str) -> bool {
    HINTS.contains(&s)
}

/// Locales the pages are translated into.
pub const LOCALES: &[&str] = &["zh-CN", "en"];

/// Whether client-given text may be stored: no control characters (a NUL, an escape sequence, a
/// bell), which no claim reference, label or id needs, which terminals and logs would act on, and
/// which PostgreSQL's text columns refuse (NUL); `multiline` text may hold line breaks and tabs.
pub fn is_plain_text(s: &str, multiline: bool) -> bool {
    s.chars()
        .all(|c| !c.is_control() || (multiline && matches!(c, '\n' | '\r' | '\t')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_is_snake_case_and_unique() {
        for list in [AREAS, ANGLES, HINTS] {
            let mut seen = std::collections::HashSet::new();
            for id in list {
                assert!(
                    id.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                    "{id} is not snake_case"
                );
                assert!(seen.insert(id), "{id} appears twice");
            }
        }
        assert_eq!(AREAS.len(), 51);
        assert_eq!(ANGLES.len(), 13);
    }

    #[test]
    fn claim_default_uses_known_ids() {
        for (area, angle) in CLAIM_DEFAULT {
            assert!(is_area(area) && is_angle(angle), "{area}/{angle}");
        }
        assert!(!is_area("bumper"));
        assert!(!is_angle("FRONT"));
    }

    #[test]
    fn plain_text_has_no_control_characters() {
        assert!(is_plain_text("CLM-2024-0042 前保险杠", false));
        assert!(!is_plain_text("a\u{0}b", false));
        assert!(!is_plain_text("a\u{1b}[31mred", false));
        assert!(!is_plain_text("two\nlines", false));
        assert!(is_plain_text("two\nlines,\ta tab", true));
        assert!(!is_plain_text("a\u{0}b", true));
    }
}
