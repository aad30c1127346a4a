//! What time it is for the person Sandra answers: pure code, the instant is always given.
//!
//! A language model has no clock: asked "what time is it in Lisbon?" it invents one. So every
//! prompt carries one line with the current date and time in the user's time zone
//! ([`now_line`]). The zone comes from, in order:
//! 1. the user's profile (an IANA name such as `Europe/Lisbon`, once they have set one);
//! 2. a guess from the country calling code of their WhatsApp number ([`zone_for_number`]);
//! 3. nothing: the line gives UTC and says plainly that the zone is unknown, rather than
//!    pretending.
//!
//! The guess is a longest-prefix match over E.164 digits. A country with several zones gets
//! the zone where most of its people live (or its capital's): `+1` is America/New_York except
//! for the area codes listed below (other NANP countries, and the big cities of the Central,
//! Mountain and Pacific zones, Alaska and Hawaii); `+7` is Europe/Moscow (`+76`/`+77`,
//! Kazakhstan, is Asia/Almaty); `+55` is America/Sao_Paulo; `+61` is Australia/Sydney; `+52`
//! is America/Mexico_City; `+62` is Asia/Jakarta; `+243` is Africa/Kinshasa. The prompt says the
//! zone was guessed from the number, so the model can ask when it matters.
//!
//! In a group the zone is that of whoever asked (the author of the newest message addressed to
//! Sandra): the answer is for them, members may live in different countries, and a group has no
//! country of its own.
//!
//! Zones are looked up in the system's tz database and, when it lacks one (a container without
//! `/usr/share/zoneinfo`, or an old copy), in the copy compiled into the binary (jiff's
//! `tzdb-bundle-always`): operators run a single binary.

use jiff::Timestamp;
use jiff::tz::{TimeZone, TimeZoneDatabase};

/// Where the zone of a prompt's clock line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneSource {
    /// The user set it in their profile.
    Profile,
    /// Guessed from the calling code of their number.
    Number,
}

/// A time zone by its IANA name, from the system's database or else the bundled one.
/// `Err` names the zone and says why, for a profile setting that was mistyped.
pub fn zone(name: &str) -> Result<TimeZone, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("an empty time zone name".into());
    }
    TimeZone::get(name)
        .or_else(|_| TimeZoneDatabase::bundled().get(name))
        .map_err(|e| format!("unknown time zone {name:?}: {e}"))
}

/// The representative IANA zone for a WhatsApp number (`wa_id`, `from`: E.164 digits, with or
/// without `+`, spaces or dashes), or `None` when its calling code is not in the table.
pub fn zone_for_number(number: &str) -> Option<&'static str> {
    let digits: String = number
        .trim_start_matches('+')
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.'))
        .collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ZONES
        .iter()
        .filter(|(prefix, _)| digits.starts_with(prefix))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, zone)| *zone)
}

/// The prompt's clock line: the date and time at `now` in the asker's zone, the zone, its UTC
/// offset and where the zone came from. `profile_zone` wins when it names a real zone; else the
/// zone is guessed from `number`; else the line is in UTC and says the zone is unknown.
/// `in_group`: the zone is that of the person who addressed Sandra, and the line says so.
pub fn now_line(
    now: Timestamp,
    profile_zone: Option<&str>,
    number: Option<&str>,
    in_group: bool,
) -> String {
    now_parts(now, profile_zone, number, in_group).line()
}

/// [`now_line`] cut around its time of day, so that a later line can be told to be of the same
/// day in the same zone (only its time differs) and a follow-up can give just the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NowLine {
    /// Up to the time: `It is now Tuesday 1 December 2026, `.
    pub day: String,
    /// `HH:MM`, 24-hour.
    pub time: String,
    /// After the time: the zone, its offset and its source (` in Europe/Lisbon (UTC+00:00;
    /// guessed from the user's number).`).
    pub zone: String,
}

impl NowLine {
    /// The whole line.
    pub fn line(&self) -> String {
        format!("{}{}{}", self.day, self.time, self.zone)
    }

    /// Whether `line` (a whole line, from any minute) says the same day, zone, offset and source
    /// as this one.
    pub fn same_day_and_zone(&self, line: &str) -> bool {
        line.strip_prefix(self.day.as_str())
            .and_then(|rest| rest.strip_suffix(self.zone.as_str()))
            .is_some_and(|time| time.len() == self.time.len())
    }
}

/// [`now_line`] in its parts.
pub fn now_parts(
    now: Timestamp,
    profile_zone: Option<&str>,
    number: Option<&str>,
    in_group: bool,
) -> NowLine {
    let found = profile_zone
        .and_then(|n| {
            let tz = zone(n).ok()?;
            // The database's spelling, whatever case the user typed.
            let name = tz.iana_name().unwrap_or(n.trim()).to_string();
            Some((name, tz, ZoneSource::Profile))
        })
        .or_else(|| {
            let name = number.and_then(zone_for_number)?;
            zone(name)
                .ok()
                .map(|tz| (name.to_string(), tz, ZoneSource::Number))
        });
    // Kept short: every turn's prompt carries it.
    let whose = if in_group {
        "the person who addressed you"
    } else {
        "the user"
    };
    let Some((name, tz, source)) = found else {
        let utc = now.to_zoned_datetime(TimeZone::UTC);
        return NowLine {
            day: format!("It is now {}, ", utc.strftime("%A %-d %B %Y")),
            time: utc.strftime("%H:%M").to_string(),
            zone: format!(" UTC; the time zone of {whose} is unknown."),
        };
    };
    let local = now.to_zoned_datetime(tz);
    let from = match source {
        ZoneSource::Profile if !in_group => "the user's time zone".to_string(),
        ZoneSource::Profile => format!("the time zone of {whose}"),
        ZoneSource::Number if !in_group => "guessed from the user's number".to_string(),
        ZoneSource::Number => format!("guessed from the number of {whose}"),
    };
    NowLine {
        day: format!("It is now {}, ", local.strftime("%A %-d %B %Y")),
        time: local.strftime("%H:%M").to_string(),
        zone: format!(" in {name} (UTC{}; {from}).", local.strftime("%:z")),
    }
}

/// Calling code (plus area code where one country spans zones) → zone. Longest prefix wins.
/// Every country with one of Sandra's languages is here (Spanish, Portuguese, French and
/// German speaking ones), with the most populous calling codes of the rest.
const ZONES: &[(&str, &str)] = &[
    // North American Numbering Plan: the US and Canada default to Eastern time.
    ("1", "America/New_York"),
    // Other NANP countries.
    ("1242", "America/Nassau"),
    ("1246", "America/Barbados"),
    ("1787", "America/Puerto_Rico"),
    ("1939", "America/Puerto_Rico"),
    ("1809", "America/Santo_Domingo"),
    ("1829", "America/Santo_Domingo"),
    ("1849", "America/Santo_Domingo"),
    ("1868", "America/Port_of_Spain"),
    ("1876", "America/Jamaica"),
    // Canada: Eastern (named so), Central, Mountain, Pacific.
    ("1416", "America/Toronto"),
    ("1437", "America/Toronto"),
    ("1647", "America/Toronto"),
    ("1905", "America/Toronto"),
    ("1514", "America/Toronto"),
    ("1438", "America/Toronto"),
    ("1418", "America/Toronto"),
    ("1450", "America/Toronto"),
    ("1819", "America/Toronto"),
    ("1613", "America/Toronto"),
    ("1204", "America/Winnipeg"),
    ("1403", "America/Edmonton"),
    ("1587", "America/Edmonton"),
    ("1780", "America/Edmonton"),
    ("1604", "America/Vancouver"),
    ("1778", "America/Vancouver"),
    ("1236", "America/Vancouver"),
    // US Central.
    ("1312", "America/Chicago"),
    ("1773", "America/Chicago"),
    ("1872", "America/Chicago"),
    ("1847", "America/Chicago"),
    ("1630", "America/Chicago"),
    ("1708", "America/Chicago"),
    ("1713", "America/Chicago"),
    ("1281", "America/Chicago"),
    ("1832", "America/Chicago"),
    ("1346", "America/Chicago"),
    ("1214", "America/Chicago"),
    ("1469", "America/Chicago"),
    ("1972", "America/Chicago"),
    ("1817", "America/Chicago"),
    ("1512", "America/Chicago"),
    ("1210", "America/Chicago"),
    ("1612", "America/Chicago"),
    ("1651", "America/Chicago"),
    ("1314", "America/Chicago"),
    ("1816", "America/Chicago"),
    ("1504", "America/Chicago"),
    ("1615", "America/Chicago"),
    ("1414", "America/Chicago"),
    // US Mountain (Arizona keeps no daylight saving time).
    ("1303", "America/Denver"),
    ("1720", "America/Denver"),
    ("1801", "America/Denver"),
    ("1385", "America/Denver"),
    ("1505", "America/Denver"),
    ("1602", "America/Phoenix"),
    ("1480", "America/Phoenix"),
    ("1623", "America/Phoenix"),
    ("1520", "America/Phoenix"),
    // US Pacific.
    ("1213", "America/Los_Angeles"),
    ("1310", "America/Los_Angeles"),
    ("1323", "America/Los_Angeles"),
    ("1424", "America/Los_Angeles"),
    ("1562", "America/Los_Angeles"),
    ("1626", "America/Los_Angeles"),
    ("1661", "America/Los_Angeles"),
    ("1714", "America/Los_Angeles"),
    ("1818", "America/Los_Angeles"),
    ("1909", "America/Los_Angeles"),
    ("1949", "America/Los_Angeles"),
    ("1619", "America/Los_Angeles"),
    ("1858", "America/Los_Angeles"),
    ("1415", "America/Los_Angeles"),
    ("1628", "America/Los_Angeles"),
    ("1510", "America/Los_Angeles"),
    ("1408", "America/Los_Angeles"),
    ("1650", "America/Los_Angeles"),
    ("1925", "America/Los_Angeles"),
    ("1916", "America/Los_Angeles"),
    ("1206", "America/Los_Angeles"),
    ("1253", "America/Los_Angeles"),
    ("1425", "America/Los_Angeles"),
    ("1503", "America/Los_Angeles"),
    ("1971", "America/Los_Angeles"),
    ("1702", "America/Los_Angeles"),
    ("1907", "America/Anchorage"),
    ("1808", "Pacific/Honolulu"),
    // Russia (most people live in European Russia) and Kazakhstan.
    ("7", "Europe/Moscow"),
    ("76", "Asia/Almaty"),
    ("77", "Asia/Almaty"),
    // Africa.
    ("20", "Africa/Cairo"),
    ("211", "Africa/Juba"),
    ("212", "Africa/Casablanca"),
    ("213", "Africa/Algiers"),
    ("216", "Africa/Tunis"),
    ("218", "Africa/Tripoli"),
    ("220", "Africa/Banjul"),
    ("221", "Africa/Dakar"),
    ("223", "Africa/Bamako"),
    ("224", "Africa/Conakry"),
    ("225", "Africa/Abidjan"),
    ("226", "Africa/Ouagadougou"),
    ("227", "Africa/Niamey"),
    ("228", "Africa/Lome"),
    ("229", "Africa/Porto-Novo"),
    ("230", "Indian/Mauritius"),
    ("233", "Africa/Accra"),
    ("234", "Africa/Lagos"),
    ("235", "Africa/Ndjamena"),
    ("236", "Africa/Bangui"),
    ("237", "Africa/Douala"),
    ("238", "Atlantic/Cape_Verde"),
    ("239", "Africa/Sao_Tome"),
    ("240", "Africa/Malabo"),
    ("241", "Africa/Libreville"),
    ("242", "Africa/Brazzaville"),
    ("243", "Africa/Kinshasa"),
    ("244", "Africa/Luanda"),
    ("245", "Africa/Bissau"),
    ("248", "Indian/Mahe"),
    ("249", "Africa/Khartoum"),
    ("250", "Africa/Kigali"),
    ("251", "Africa/Addis_Ababa"),
    ("252", "Africa/Mogadishu"),
    ("253", "Africa/Djibouti"),
    ("254", "Africa/Nairobi"),
    ("255", "Africa/Dar_es_Salaam"),
    ("256", "Africa/Kampala"),
    ("257", "Africa/Bujumbura"),
    ("258", "Africa/Maputo"),
    ("260", "Africa/Lusaka"),
    ("261", "Indian/Antananarivo"),
    ("262", "Indian/Reunion"),
    ("263", "Africa/Harare"),
    ("264", "Africa/Windhoek"),
    ("265", "Africa/Blantyre"),
    ("266", "Africa/Maseru"),
    ("267", "Africa/Gaborone"),
    ("268", "Africa/Mbabane"),
    ("269", "Indian/Comoro"),
    ("27", "Africa/Johannesburg"),
    // Europe.
    ("30", "Europe/Athens"),
    ("31", "Europe/Amsterdam"),
    ("32", "Europe/Brussels"),
    ("33", "Europe/Paris"),
    ("34", "Europe/Madrid"),
    // The Canary Islands' landlines (their mobiles cannot be told apart).
    ("34922", "Atlantic/Canary"),
    ("34928", "Atlantic/Canary"),
    ("351", "Europe/Lisbon"),
    ("352", "Europe/Luxembourg"),
    ("353", "Europe/Dublin"),
    ("354", "Atlantic/Reykjavik"),
    ("355", "Europe/Tirane"),
    ("356", "Europe/Malta"),
    ("357", "Asia/Nicosia"),
    ("358", "Europe/Helsinki"),
    ("359", "Europe/Sofia"),
    ("36", "Europe/Budapest"),
    ("370", "Europe/Vilnius"),
    ("371", "Europe/Riga"),
    ("372", "Europe/Tallinn"),
    ("373", "Europe/Chisinau"),
    ("374", "Asia/Yerevan"),
    ("375", "Europe/Minsk"),
    ("376", "Europe/Andorra"),
    ("377", "Europe/Monaco"),
    ("380", "Europe/Kyiv"),
    ("381", "Europe/Belgrade"),
    ("382", "Europe/Podgorica"),
    ("383", "Europe/Belgrade"),
    ("385", "Europe/Zagreb"),
    ("386", "Europe/Ljubljana"),
    ("387", "Europe/Sarajevo"),
    ("389", "Europe/Skopje"),
    ("39", "Europe/Rome"),
    ("40", "Europe/Bucharest"),
    ("41", "Europe/Zurich"),
    ("420", "Europe/Prague"),
    ("421", "Europe/Bratislava"),
    ("423", "Europe/Vaduz"),
    ("43", "Europe/Vienna"),
    ("44", "Europe/London"),
    ("45", "Europe/Copenhagen"),
    ("46", "Europe/Stockholm"),
    ("47", "Europe/Oslo"),
    ("48", "Europe/Warsaw"),
    ("49", "Europe/Berlin"),
    // The Americas.
    ("501", "America/Belize"),
    ("502", "America/Guatemala"),
    ("503", "America/El_Salvador"),
    ("504", "America/Tegucigalpa"),
    ("505", "America/Managua"),
    ("506", "America/Costa_Rica"),
    ("507", "America/Panama"),
    ("509", "America/Port-au-Prince"),
    ("51", "America/Lima"),
    ("52", "America/Mexico_City"),
    ("53", "America/Havana"),
    ("54", "America/Argentina/Buenos_Aires"),
    ("55", "America/Sao_Paulo"),
    ("56", "America/Santiago"),
    ("57", "America/Bogota"),
    ("58", "America/Caracas"),
    ("590", "America/Guadeloupe"),
    ("591", "America/La_Paz"),
    ("593", "America/Guayaquil"),
    ("594", "America/Cayenne"),
    ("595", "America/Asuncion"),
    ("596", "America/Martinique"),
    ("598", "America/Montevideo"),
    // Asia and Oceania.
    ("60", "Asia/Kuala_Lumpur"),
    ("61", "Australia/Sydney"),
    ("62", "Asia/Jakarta"),
    ("63", "Asia/Manila"),
    ("64", "Pacific/Auckland"),
    ("65", "Asia/Singapore"),
    ("66", "Asia/Bangkok"),
    ("670", "Asia/Dili"),
    ("675", "Pacific/Port_Moresby"),
    ("678", "Pacific/Efate"),
    ("679", "Pacific/Fiji"),
    ("687", "Pacific/Noumea"),
    ("689", "Pacific/Tahiti"),
    ("81", "Asia/Tokyo"),
    ("82", "Asia/Seoul"),
    ("84", "Asia/Ho_Chi_Minh"),
    ("852", "Asia/Hong_Kong"),
    ("853", "Asia/Macau"),
    ("855", "Asia/Phnom_Penh"),
    ("856", "Asia/Vientiane"),
    ("86", "Asia/Shanghai"),
    ("880", "Asia/Dhaka"),
    ("886", "Asia/Taipei"),
    ("90", "Europe/Istanbul"),
    ("91", "Asia/Kolkata"),
    ("92", "Asia/Karachi"),
    ("93", "Asia/Kabul"),
    ("94", "Asia/Colombo"),
    ("95", "Asia/Yangon"),
    ("960", "Indian/Maldives"),
    ("961", "Asia/Beirut"),
    ("962", "Asia/Amman"),
    ("963", "Asia/Damascus"),
    ("964", "Asia/Baghdad"),
    ("965", "Asia/Kuwait"),
    ("966", "Asia/Riyadh"),
    ("967", "Asia/Aden"),
    ("968", "Asia/Muscat"),
    ("970", "Asia/Gaza"),
    ("971", "Asia/Dubai"),
    ("972", "Asia/Jerusalem"),
    ("973", "Asia/Bahrain"),
    ("974", "Asia/Qatar"),
    ("975", "Asia/Thimphu"),
    ("976", "Asia/Ulaanbaatar"),
    ("977", "Asia/Kathmandu"),
    ("98", "Asia/Tehran"),
    ("992", "Asia/Dushanbe"),
    ("993", "Asia/Ashgabat"),
    ("994", "Asia/Baku"),
    ("995", "Asia/Tbilisi"),
    ("996", "Asia/Bishkek"),
    ("998", "Asia/Tashkent"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn numbers_map_to_their_countrys_zone_by_longest_prefix() {
        assert_eq!(zone_for_number("351912345678"), Some("Europe/Lisbon"));
        assert_eq!(zone_for_number("+351 912 345 678"), Some("Europe/Lisbon"));
        assert_eq!(zone_for_number("12125551234"), Some("America/New_York"));
        // A +1 area code that is not listed is Eastern time, not unknown.
        assert_eq!(zone_for_number("12405551234"), Some("America/New_York"));
        assert_eq!(zone_for_number("14155551234"), Some("America/Los_Angeles"));
        assert_eq!(zone_for_number("18765551234"), Some("America/Jamaica"));
        assert_eq!(zone_for_number("447700900123"), Some("Europe/London"));
        assert_eq!(zone_for_number("34612345678"), Some("Europe/Madrid"));
        assert_eq!(zone_for_number("34922123456"), Some("Atlantic/Canary"));
        assert_eq!(zone_for_number("4915112345678"), Some("Europe/Berlin"));
        assert_eq!(zone_for_number("5511912345678"), Some("America/Sao_Paulo"));
        assert_eq!(zone_for_number("79161234567"), Some("Europe/Moscow"));
        assert_eq!(zone_for_number("77011234567"), Some("Asia/Almaty"));
        assert_eq!(zone_for_number("61412345678"), Some("Australia/Sydney"));
        assert_eq!(zone_for_number("33612345678"), Some("Europe/Paris"));
        assert_eq!(zone_for_number("244923123456"), Some("Africa/Luanda"));
        assert_eq!(zone_for_number("919812345678"), Some("Asia/Kolkata"));
    }

    #[test]
    fn unknown_or_malformed_numbers_have_no_zone() {
        // +999 is not assigned; +88 alone is not a country (+880 is).
        assert_eq!(zone_for_number("999123456"), None);
        assert_eq!(zone_for_number("8812345"), None);
        assert_eq!(zone_for_number(""), None);
        assert_eq!(zone_for_number("+"), None);
        assert_eq!(zone_for_number("user.ABC123"), None);
    }

    #[test]
    fn every_zone_in_the_table_exists_in_the_bundled_database() {
        // The bundled copy is what a machine without /usr/share/zoneinfo uses.
        let bundled = TimeZoneDatabase::bundled();
        for (prefix, name) in ZONES {
            assert!(bundled.get(name).is_ok(), "+{prefix}: {name} is not a zone");
        }
        let mut prefixes: Vec<&str> = ZONES.iter().map(|(p, _)| *p).collect();
        prefixes.sort_unstable();
        let n = prefixes.len();
        prefixes.dedup();
        assert_eq!(prefixes.len(), n, "a prefix is listed twice");
    }

    #[test]
    fn daylight_saving_time_comes_from_the_tz_database() {
        let lisbon = zone("Europe/Lisbon").unwrap();
        let summer = at("2026-07-15T12:00:00Z").to_zoned_datetime(lisbon.clone());
        assert_eq!(summer.strftime("%H:%M %:z").to_string(), "13:00 +01:00");
        let winter = at("2026-12-01T12:00:00Z").to_zoned_datetime(lisbon);
        assert_eq!(winter.strftime("%H:%M %:z").to_string(), "12:00 +00:00");
        // Through the bundled copy too, not only the system's.
        let bundled = TimeZoneDatabase::bundled().get("Europe/Lisbon").unwrap();
        let summer = at("2026-07-15T12:00:00Z").to_zoned_datetime(bundled);
        assert_eq!(summer.strftime("%:z").to_string(), "+01:00");
    }

    #[test]
    fn zone_names_are_checked() {
        assert!(zone("Europe/Lisbon").is_ok());
        let err = zone("Europe/Lisbonn").unwrap_err();
        assert!(err.contains("\"Europe/Lisbonn\""), "{err}");
        assert!(zone("  ").is_err());
    }

    #[test]
    fn lines_of_the_same_day_and_zone_differ_only_in_their_time() {
        let lisbon = |t: &str| now_parts(at(t), None, Some("351912345678"), false);
        let now = lisbon("2026-12-01T14:05:00Z");
        assert_eq!(now.time, "14:05");
        assert!(now.same_day_and_zone(&now.line()));
        assert!(now.same_day_and_zone(&lisbon("2026-12-01T08:59:00Z").line()));
        assert!(now.same_day_and_zone(&lisbon("2026-12-01T23:59:00Z").line()));
        // The next day, another zone, another source of the same zone, or the same zone in
        // a group: a line of its own.
        assert!(!now.same_day_and_zone(&lisbon("2026-12-02T00:00:00Z").line()));
        let elsewhere = now_parts(at("2026-12-01T14:05:00Z"), None, Some("12125551234"), false);
        assert!(!now.same_day_and_zone(&elsewhere.line()));
        let set = now_parts(
            at("2026-12-01T14:06:00Z"),
            Some("Europe/Lisbon"),
            None,
            false,
        );
        assert!(!now.same_day_and_zone(&set.line()));
        let group = now_parts(at("2026-12-01T14:06:00Z"), None, Some("351912345678"), true);
        assert!(!now.same_day_and_zone(&group.line()));
        // Summer time starts at 01:00 UTC on 29 March 2026 in Lisbon: same day, new offset.
        let before = lisbon("2026-03-29T00:30:00Z");
        assert!(!before.same_day_and_zone(&lisbon("2026-03-29T01:30:00Z").line()));
        // Unknown zones: the same, in UTC.
        let utc = |t: &str| now_parts(at(t), None, None, false);
        assert!(utc("2026-12-01T14:05:00Z").same_day_and_zone(&utc("2026-12-01T20:00:00Z").line()));
        assert!(!utc("2026-12-01T14:05:00Z").same_day_and_zone(&now.line()));
        // Not a clock line at all.
        assert!(!now.same_day_and_zone("It is now 14:07."));
    }

    #[test]
    fn the_line_says_the_local_time_and_where_the_zone_came_from() {
        let now = at("2026-12-01T14:05:00Z");
        assert_eq!(
            now_line(now, None, Some("351912345678"), false),
            "It is now Tuesday 1 December 2026, 14:05 in Europe/Lisbon (UTC+00:00; guessed \
             from the user's number)."
        );
        // The profile wins over the number; the local date is not UTC's.
        assert_eq!(
            now_line(now, Some(" pacific/auckland"), Some("351912345678"), false),
            "It is now Wednesday 2 December 2026, 03:05 in Pacific/Auckland (UTC+13:00; the \
             user's time zone)."
        );
        // A profile zone that does not exist falls back to the number.
        assert_eq!(
            now_line(now, Some("Mars/Olympus"), Some("12125551234"), false),
            "It is now Tuesday 1 December 2026, 09:05 in America/New_York (UTC-05:00; guessed \
             from the user's number)."
        );
        assert_eq!(
            now_line(now, None, Some("4915112345678"), true),
            "It is now Tuesday 1 December 2026, 15:05 in Europe/Berlin (UTC+01:00; guessed \
             from the number of the person who addressed you)."
        );
        assert_eq!(
            now_line(now, None, Some("999123"), false),
            "It is now Tuesday 1 December 2026, 14:05 UTC; the time zone of the user is unknown."
        );
        assert_eq!(
            now_line(now, None, None, true),
            "It is now Tuesday 1 December 2026, 14:05 UTC; the time zone of the person who \
             addressed you is unknown."
        );
    }
}
