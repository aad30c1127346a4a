//! Every text Sandra sends without asking the model: command answers, apologies, notes about
//! voice notes and media. One place, so wording stays consistent and each text exists in every
//! language Sandra ships.
//!
//! The language is the user's when it can be told: the language Whisper heard in a voice note,
//! or the language of the user's own words when they are long enough to say (`whatlang`, only
//! when it calls its guess reliable). Otherwise English. Texts meant for the model (the bracketed
//! descriptions of shared locations, contacts, media) are not here: the model reads English and
//! answers in the user's language itself.

use crate::accounts::Said;

/// A language Sandra's canned texts exist in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    En,
    Es,
    Pt,
    Fr,
    De,
}

/// Fewer characters than this say too little about their language to switch away from English
/// ("ok", "Lisboa", "PANIC forever" are all guessed wrongly now and then).
const MIN_DETECT_CHARS: usize = 16;

/// Built once (every turn asks it). Only the languages Sandra has texts for compete: a guess
/// among five is much surer than among seventy, and anything else stays English anyway.
static DETECTOR: std::sync::LazyLock<whatlang::Detector> = std::sync::LazyLock::new(|| {
    whatlang::Detector::with_allowlist(vec![
        whatlang::Lang::Eng,
        whatlang::Lang::Spa,
        whatlang::Lang::Por,
        whatlang::Lang::Fra,
        whatlang::Lang::Deu,
    ])
});

/// whatlang's confidence (0–1) below which a guess is not acted on.
const MIN_CONFIDENCE: f64 = 0.25;

impl Lang {
    /// The language of `text`, when it is one Sandra has texts for and the guess is reliable.
    pub fn detect(text: &str) -> Option<Lang> {
        let text = text.trim();
        if text.chars().filter(|c| c.is_alphabetic()).count() < MIN_DETECT_CHARS {
            return None;
        }
        let info = DETECTOR.detect(text)?;
        if info.script() != whatlang::Script::Latin || info.confidence() < MIN_CONFIDENCE {
            return None;
        }
        Some(match info.lang() {
            whatlang::Lang::Spa => Lang::Es,
            whatlang::Lang::Por => Lang::Pt,
            whatlang::Lang::Fra => Lang::Fr,
            whatlang::Lang::Deu => Lang::De,
            _ => Lang::En,
        })
    }

    /// From an ISO 639-1 code (what Whisper reports).
    pub fn from_code(code: &str) -> Option<Lang> {
        match code {
            "en" => Some(Lang::En),
            "es" => Some(Lang::Es),
            "pt" => Some(Lang::Pt),
            "fr" => Some(Lang::Fr),
            "de" => Some(Lang::De),
            _ => None,
        }
    }
}

/// Picks one of five translations by language.
macro_rules! by_lang {
    ($lang:expr, en: $en:expr, es: $es:expr, pt: $pt:expr, fr: $fr:expr, de: $de:expr $(,)?) => {
        match $lang {
            Lang::En => $en,
            Lang::Es => $es,
            Lang::Pt => $pt,
            Lang::Fr => $fr,
            Lang::De => $de,
        }
    };
}

pub fn help(l: Lang) -> String {
    by_lang!(l,
        en: "I'm Sandra, an AI assistant. Just write to me and I'll answer. Commands: /reset forgets our conversation, /help shows this message.",
        es: "Soy Sandra, una asistente de IA. Escríbeme y te responderé. Comandos: /reset olvida nuestra conversación, /help muestra este mensaje.",
        pt: "Sou a Sandra, uma assistente de IA. Escreva-me e eu respondo. Comandos: /reset esquece a nossa conversa, /help mostra esta mensagem.",
        fr: "Je suis Sandra, une assistante IA. Écrivez-moi et je vous répondrai. Commandes : /reset oublie notre conversation, /help affiche ce message.",
        de: "Ich bin Sandra, eine KI-Assistentin. Schreib mir einfach, ich antworte. Befehle: /reset vergisst unser Gespräch, /help zeigt diese Nachricht.",
    )
    .to_string()
}

pub fn unknown_command(l: Lang, cmd: &str) -> String {
    let intro = by_lang!(l,
        en: format!("I don't know the command /{cmd}."),
        es: format!("No conozco el comando /{cmd}."),
        pt: format!("Não conheço o comando /{cmd}."),
        fr: format!("Je ne connais pas la commande /{cmd}."),
        de: format!("Den Befehl /{cmd} kenne ich nicht."),
    );
    format!("{intro} {}", help(l))
}

pub fn reset_done(l: Lang) -> String {
    by_lang!(l,
        en: "Done: I've forgotten our conversation. Let's start fresh.",
        es: "Hecho: he olvidado nuestra conversación. Empecemos de nuevo.",
        pt: "Feito: esqueci a nossa conversa. Vamos recomeçar.",
        fr: "C'est fait : j'ai oublié notre conversation. On repart de zéro.",
        de: "Erledigt: Ich habe unser Gespräch vergessen. Fangen wir neu an.",
    )
    .to_string()
}

/// Sent once when a reply takes longer than `conversation.wait_notice_after`: the message
/// arrived and the answer is on its way (nothing to send again).
pub fn wait_notice(l: Lang) -> String {
    by_lang!(l,
        en: "Got it, answering in a moment.",
        es: "Recibido, te respondo en un momento.",
        pt: "Recebido, respondo já a seguir.",
        fr: "Bien reçu, je vous réponds dans un instant.",
        de: "Angekommen, ich antworte gleich.",
    )
    .to_string()
}

pub fn brain_failed(l: Lang) -> String {
    by_lang!(l,
        en: "Sorry, something went wrong while I was thinking about that. Please try again.",
        es: "Lo siento, algo salió mal mientras lo pensaba. Inténtalo de nuevo, por favor.",
        pt: "Desculpe, algo correu mal enquanto eu pensava nisso. Tente de novo, por favor.",
        fr: "Désolée, un problème est survenu pendant que j'y réfléchissais. Réessayez, s'il vous plaît.",
        de: "Entschuldigung, beim Nachdenken ist etwas schiefgegangen. Bitte versuch es noch einmal.",
    )
    .to_string()
}

pub fn poison_apology(l: Lang) -> String {
    by_lang!(l,
        en: "Sorry, I couldn't process one of your messages. Please try sending it differently.",
        es: "Lo siento, no pude procesar uno de tus mensajes. Intenta enviarlo de otra forma.",
        pt: "Desculpe, não consegui processar uma das suas mensagens. Tente enviá-la de outra forma.",
        fr: "Désolée, je n'ai pas pu traiter un de vos messages. Essayez de l'envoyer autrement.",
        de: "Entschuldigung, eine deiner Nachrichten konnte ich nicht verarbeiten. Versuch, sie anders zu senden.",
    )
    .to_string()
}

pub fn rate_notice(l: Lang) -> String {
    by_lang!(l,
        en: "You're sending messages faster than I can answer; I'll skip some for a minute.",
        es: "Envías mensajes más rápido de lo que puedo responder; me saltaré algunos durante un minuto.",
        pt: "Está a enviar mensagens mais depressa do que consigo responder; vou ignorar algumas durante um minuto.",
        fr: "Vous envoyez des messages plus vite que je ne peux répondre ; j'en ignorerai quelques-uns pendant une minute.",
        de: "Du schickst Nachrichten schneller, als ich antworten kann; ich überspringe eine Minute lang einige.",
    )
    .to_string()
}

/// What kind of media a user sent, in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaWord {
    Photo,
    VoiceNote,
    AudioFile,
    Video,
    Document,
    Sticker,
}

impl MediaWord {
    /// English, for the model's bracketed descriptions.
    pub fn english(self) -> &'static str {
        self.word(Lang::En).0
    }

    /// (singular, plural)
    fn word(self, l: Lang) -> (&'static str, &'static str) {
        use MediaWord::*;
        match (self, l) {
            (Photo, Lang::En) => ("photo", "photos"),
            (VoiceNote, Lang::En) => ("voice note", "voice notes"),
            (AudioFile, Lang::En) => ("audio file", "audio files"),
            (Video, Lang::En) => ("video", "videos"),
            (Document, Lang::En) => ("document", "documents"),
            (Sticker, Lang::En) => ("sticker", "stickers"),
            (Photo, Lang::Es) => ("foto", "fotos"),
            (VoiceNote, Lang::Es) => ("nota de voz", "notas de voz"),
            (AudioFile, Lang::Es) => ("archivo de audio", "archivos de audio"),
            (Video, Lang::Es) => ("vídeo", "vídeos"),
            (Document, Lang::Es) => ("documento", "documentos"),
            (Sticker, Lang::Es) => ("sticker", "stickers"),
            (Photo, Lang::Pt) => ("foto", "fotos"),
            (VoiceNote, Lang::Pt) => ("mensagem de voz", "mensagens de voz"),
            (AudioFile, Lang::Pt) => ("ficheiro de áudio", "ficheiros de áudio"),
            (Video, Lang::Pt) => ("vídeo", "vídeos"),
            (Document, Lang::Pt) => ("documento", "documentos"),
            (Sticker, Lang::Pt) => ("figurinha", "figurinhas"),
            (Photo, Lang::Fr) => ("photo", "photos"),
            (VoiceNote, Lang::Fr) => ("message vocal", "messages vocaux"),
            (AudioFile, Lang::Fr) => ("fichier audio", "fichiers audio"),
            (Video, Lang::Fr) => ("vidéo", "vidéos"),
            (Document, Lang::Fr) => ("document", "documents"),
            (Sticker, Lang::Fr) => ("sticker", "stickers"),
            (Photo, Lang::De) => ("Foto", "Fotos"),
            (VoiceNote, Lang::De) => ("Sprachnachricht", "Sprachnachrichten"),
            (AudioFile, Lang::De) => ("Audiodatei", "Audiodateien"),
            (Video, Lang::De) => ("Video", "Videos"),
            (Document, Lang::De) => ("Dokument", "Dokumente"),
            (Sticker, Lang::De) => ("Sticker", "Sticker"),
        }
    }
}

pub fn cannot_open(l: Lang, what: MediaWord) -> String {
    let (one, many) = what.word(l);
    by_lang!(l,
        en: format!("I got your {one}, but I can't open {many} yet. Could you tell me in a text message what you'd like me to know about it?"),
        es: format!("Recibí tu {one}, pero todavía no puedo abrir {many}. ¿Me cuentas en un mensaje de texto qué quieres que sepa?"),
        pt: format!("Recebi a sua {one}, mas ainda não consigo abrir {many}. Pode dizer-me numa mensagem de texto o que quer que eu saiba?"),
        fr: format!("J'ai bien reçu votre {one}, mais je ne peux pas encore ouvrir les {many}. Pouvez-vous me dire par écrit ce que vous voulez que je sache ?"),
        de: format!("Ich habe dein(e) {one} bekommen, kann {many} aber noch nicht öffnen. Schreibst du mir, was ich darüber wissen soll?"),
    )
}

pub fn cannot_read(l: Lang, kind: &str) -> String {
    by_lang!(l,
        en: format!("I can't read this kind of message ({kind}) yet. Could you send it as text?"),
        es: format!("Todavía no puedo leer este tipo de mensaje ({kind}). ¿Puedes enviarlo como texto?"),
        pt: format!("Ainda não consigo ler este tipo de mensagem ({kind}). Pode enviá-la como texto?"),
        fr: format!("Je ne sais pas encore lire ce type de message ({kind}). Pouvez-vous l'envoyer en texte ?"),
        de: format!("Diese Art von Nachricht ({kind}) kann ich noch nicht lesen. Kannst du sie als Text schicken?"),
    )
}

/// Why a voice note could not be heard, as the user is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoiceProblem {
    /// Meta no longer has the media.
    Gone,
    TooLarge,
    Download,
    UnsupportedFormat,
    Undecodable,
    Transcription,
    Silent,
}

pub fn voice_problem(l: Lang, p: VoiceProblem) -> String {
    use VoiceProblem::*;
    match p {
        Gone => by_lang!(l,
            en: "I couldn't download your voice note anymore. Could you send it again?",
            es: "Ya no pude descargar tu nota de voz. ¿Puedes enviarla de nuevo?",
            pt: "Já não consegui descarregar a sua mensagem de voz. Pode enviá-la de novo?",
            fr: "Je n'ai plus pu télécharger votre message vocal. Pouvez-vous le renvoyer ?",
            de: "Deine Sprachnachricht konnte ich nicht mehr herunterladen. Schickst du sie noch einmal?",
        ),
        TooLarge => by_lang!(l,
            en: "Your voice note is too long for me. Could you send a shorter one?",
            es: "Tu nota de voz es demasiado larga para mí. ¿Puedes enviar una más corta?",
            pt: "A sua mensagem de voz é demasiado longa para mim. Pode enviar uma mais curta?",
            fr: "Votre message vocal est trop long pour moi. Pouvez-vous en envoyer un plus court ?",
            de: "Deine Sprachnachricht ist mir zu lang. Kannst du eine kürzere schicken?",
        ),
        Download => by_lang!(l,
            en: "I couldn't download your voice note. Could you send it again?",
            es: "No pude descargar tu nota de voz. ¿Puedes enviarla de nuevo?",
            pt: "Não consegui descarregar a sua mensagem de voz. Pode enviá-la de novo?",
            fr: "Je n'ai pas pu télécharger votre message vocal. Pouvez-vous le renvoyer ?",
            de: "Ich konnte deine Sprachnachricht nicht herunterladen. Schickst du sie noch einmal?",
        ),
        UnsupportedFormat => by_lang!(l,
            en: "I can't play this audio format yet. Could you record a voice note instead?",
            es: "Todavía no puedo reproducir este formato de audio. ¿Puedes grabar una nota de voz?",
            pt: "Ainda não consigo reproduzir este formato de áudio. Pode gravar uma mensagem de voz?",
            fr: "Je ne sais pas encore lire ce format audio. Pouvez-vous enregistrer un message vocal ?",
            de: "Dieses Audioformat kann ich noch nicht abspielen. Kannst du stattdessen eine Sprachnachricht aufnehmen?",
        ),
        Undecodable => by_lang!(l,
            en: "I couldn't play your voice note. Could you send it again?",
            es: "No pude reproducir tu nota de voz. ¿Puedes enviarla de nuevo?",
            pt: "Não consegui reproduzir a sua mensagem de voz. Pode enviá-la de novo?",
            fr: "Je n'ai pas pu lire votre message vocal. Pouvez-vous le renvoyer ?",
            de: "Ich konnte deine Sprachnachricht nicht abspielen. Schickst du sie noch einmal?",
        ),
        Transcription => by_lang!(l,
            en: "Sorry, I couldn't transcribe your voice note. Could you try again, or type it?",
            es: "Lo siento, no pude transcribir tu nota de voz. ¿Lo intentas de nuevo o lo escribes?",
            pt: "Desculpe, não consegui transcrever a sua mensagem de voz. Tenta de novo, ou escreve?",
            fr: "Désolée, je n'ai pas pu transcrire votre message vocal. Réessayez, ou écrivez-le ?",
            de: "Entschuldigung, ich konnte deine Sprachnachricht nicht abschreiben. Versuchst du es noch einmal oder tippst es?",
        ),
        Silent => by_lang!(l,
            en: "I couldn't hear anything in your voice note. Could you try again?",
            es: "No oí nada en tu nota de voz. ¿Lo intentas de nuevo?",
            pt: "Não ouvi nada na sua mensagem de voz. Pode tentar de novo?",
            fr: "Je n'ai rien entendu dans votre message vocal. Pouvez-vous réessayer ?",
            de: "In deiner Sprachnachricht habe ich nichts gehört. Versuchst du es noch einmal?",
        ),
    }
    .to_string()
}

/// Why a photo or document could not be seen, as the user is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SightProblem {
    /// Meta no longer has the media.
    Gone,
    /// Over the download size or the pixel cap.
    TooLarge,
    Download,
    /// Not a valid image or document (corrupt, truncated, not what it says it is).
    Undecodable,
    /// A document type Sandra cannot read (only PDFs and plain text), or an image format.
    Unsupported,
    /// A password-protected PDF.
    Encrypted,
    /// The models failed, or took too long.
    Failed,
}

pub fn sight_problem(l: Lang, p: &SightProblem, what: MediaWord) -> String {
    use SightProblem::*;
    let (one, _) = what.word(l);
    match p {
        Gone => by_lang!(l,
            en: format!("I couldn't download your {one} anymore. Could you send it again?"),
            es: format!("Ya no pude descargar tu {one}. ¿Puedes volver a enviar el archivo?"),
            pt: "Já não consegui descarregar o ficheiro que enviou. Pode enviá-lo de novo?".to_string(),
            fr: format!("Je n'ai plus pu télécharger votre {one}. Pouvez-vous renvoyer le fichier ?"),
            de: "Die Datei konnte ich nicht mehr herunterladen. Schickst du sie noch einmal?".to_string(),
        ),
        TooLarge => by_lang!(l,
            en: format!("Your {one} is too large for me to open. Could you send a smaller one?"),
            es: "El archivo es demasiado grande para que lo abra. ¿Puedes enviar uno más pequeño?".to_string(),
            pt: "O ficheiro que enviou é demasiado grande para eu abrir. Pode enviar um mais pequeno?".to_string(),
            fr: "Ce fichier est trop volumineux pour moi. Pouvez-vous en envoyer un plus petit ?".to_string(),
            de: "Die Datei ist zu groß für mich. Kannst du eine kleinere schicken?".to_string(),
        ),
        Download => by_lang!(l,
            en: format!("I couldn't download your {one}. Could you send it again?"),
            es: format!("No pude descargar tu {one}. ¿Puedes volver a enviar el archivo?"),
            pt: "Não consegui descarregar o ficheiro que enviou. Pode enviá-lo de novo?".to_string(),
            fr: format!("Je n'ai pas pu télécharger votre {one}. Pouvez-vous renvoyer le fichier ?"),
            de: "Ich konnte die Datei nicht herunterladen. Schickst du sie noch einmal?".to_string(),
        ),
        Undecodable => by_lang!(l,
            en: format!("I couldn't open your {one}: the file seems damaged. Could you send it again?"),
            es: format!("No pude abrir tu {one}: el archivo parece dañado. ¿Puedes volver a enviarlo?"),
            pt: "Não consegui abrir o ficheiro que enviou: parece estar danificado. Pode enviá-lo de novo?".to_string(),
            fr: format!("Je n'ai pas pu ouvrir votre {one} : le fichier semble endommagé. Pouvez-vous renvoyer le fichier ?"),
            de: "Ich konnte die Datei nicht öffnen: Sie scheint beschädigt zu sein. Schickst du sie noch einmal?".to_string(),
        ),
        Unsupported => by_lang!(l,
            en: "I can read photos, PDFs and plain-text documents, but not this kind of file yet. Could you send it as a PDF or as text?".to_string(),
            es: "Puedo leer fotos, PDF y documentos de texto, pero todavía no este tipo de archivo. ¿Puedes enviarlo como PDF o como texto?".to_string(),
            pt: "Consigo ler fotos, PDF e documentos de texto, mas ainda não este tipo de ficheiro. Pode enviá-lo como PDF ou como texto?".to_string(),
            fr: "Je sais lire les photos, les PDF et les documents texte, mais pas encore ce type de fichier. Pouvez-vous l'envoyer en PDF ou en texte ?".to_string(),
            de: "Ich kann Fotos, PDFs und Textdokumente lesen, diese Art von Datei aber noch nicht. Kannst du sie als PDF oder als Text schicken?".to_string(),
        ),
        Encrypted => by_lang!(l,
            en: "This document is password-protected, so I can't read it. Could you send a copy without the password?".to_string(),
            es: "Este documento está protegido con contraseña, así que no puedo leerlo. ¿Puedes enviar una copia sin contraseña?".to_string(),
            pt: "Este documento está protegido por palavra-passe, por isso não o consigo ler. Pode enviar uma cópia sem palavra-passe?".to_string(),
            fr: "Ce document est protégé par un mot de passe, je ne peux donc pas le lire. Pouvez-vous envoyer une copie sans mot de passe ?".to_string(),
            de: "Dieses Dokument ist passwortgeschützt, deshalb kann ich es nicht lesen. Kannst du eine Kopie ohne Passwort schicken?".to_string(),
        ),
        Failed => by_lang!(l,
            en: format!("Sorry, I couldn't read your {one}. Could you try again?"),
            es: format!("Lo siento, no pude leer tu {one}. ¿Lo intentas de nuevo?"),
            pt: "Desculpe, não consegui ler o ficheiro que enviou. Pode tentar de novo?".to_string(),
            fr: format!("Désolée, je n'ai pas pu lire votre {one}. Pouvez-vous réessayer ?"),
            de: "Entschuldigung, ich konnte die Datei nicht lesen. Versuchst du es noch einmal?".to_string(),
        ),
    }
}

/// A photo with no text in it, and no scene model to describe it: said plainly, never guessed.
pub fn nothing_seen(l: Lang, what: MediaWord) -> String {
    let (one, _) = what.word(l);
    by_lang!(l,
        en: format!("I can read the text in photos, but I can't describe pictures yet, and I found no text in your {one}. Could you tell me in words what it shows?"),
        es: format!("Puedo leer el texto de las fotos, pero todavía no sé describir imágenes, y no encontré texto en tu {one}. ¿Me cuentas con palabras qué muestra?"),
        pt: "Consigo ler o texto das fotos, mas ainda não sei descrever imagens, e não encontrei texto no que enviou. Pode dizer-me por palavras o que mostra?".to_string(),
        fr: format!("Je sais lire le texte des photos, mais je ne sais pas encore décrire les images, et je n'ai trouvé aucun texte dans votre {one}. Pouvez-vous me décrire par écrit ce qu'on y voit ?"),
        de: "Ich kann Text in Fotos lesen, aber noch keine Bilder beschreiben, und in diesem Bild habe ich keinen Text gefunden. Kannst du mir in Worten sagen, was es zeigt?".to_string(),
    )
}

/// A document with no text at all (an empty file, or scanned pages beyond what is read).
pub fn document_empty(l: Lang) -> String {
    by_lang!(l,
        en: "I found no text in your document. If it is a scan, could you send the pages as photos?",
        es: "No encontré texto en tu documento. Si es un escaneo, ¿puedes enviar las páginas como fotos?",
        pt: "Não encontrei texto no seu documento. Se for uma digitalização, pode enviar as páginas como fotos?",
        fr: "Je n'ai trouvé aucun texte dans votre document. Si c'est un scan, pouvez-vous envoyer les pages en photos ?",
        de: "In deinem Dokument habe ich keinen Text gefunden. Wenn es ein Scan ist, kannst du die Seiten als Fotos schicken?",
    )
    .to_string()
}

/// Only the first `max_seconds` of a long voice note were heard.
pub fn voice_truncated(l: Lang, max_seconds: f32) -> String {
    let limit = duration(l, max_seconds);
    by_lang!(l,
        en: format!("Your voice note is longer than {limit}; I only listened to the first {limit}."),
        es: format!("Tu nota de voz dura más de {limit}; solo escuché los primeros {limit}."),
        pt: format!("A sua mensagem de voz tem mais de {limit}; só ouvi os primeiros {limit}."),
        fr: format!("Votre message vocal dure plus de {limit} ; je n'en ai écouté que les {limit} premières."),
        de: format!("Deine Sprachnachricht ist länger als {limit}; ich habe nur die ersten {limit} angehört."),
    )
}

/// "15 minutes", "1 minute", "90 seconds", "1 minute 30 seconds" (whole seconds), in `l`.
pub fn duration(l: Lang, seconds: f32) -> String {
    let total = seconds.round().max(1.0) as u64;
    let (minute, minutes, second, seconds) = by_lang!(l,
        en: ("minute", "minutes", "second", "seconds"),
        es: ("minuto", "minutos", "segundo", "segundos"),
        pt: ("minuto", "minutos", "segundo", "segundos"),
        fr: ("minute", "minutes", "seconde", "secondes"),
        de: ("Minute", "Minuten", "Sekunde", "Sekunden"),
    );
    let unit = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    match (total / 60, total % 60) {
        (0, s) => unit(s, second, seconds),
        (m, 0) => unit(m, minute, minutes),
        (m, s) => format!("{} {}", unit(m, minute, minutes), unit(s, second, seconds)),
    }
}

/// Appended to `/help`: the account commands.
pub fn account_help(l: Lang) -> String {
    by_lang!(l,
        en: "Account: /link links this number to your email, /whoami shows it, /unlink removes it, /name sets what I call you, /remember notes something for later, /notes lists the notes, /language, /length and /timezone set your preferences, /forget erases what I store about this number.",
        es: "Cuenta: /link vincula este número a tu correo, /whoami lo muestra, /unlink lo quita, /name fija cómo te llamo, /remember anota algo para más adelante, /notes lista las notas, /language, /length y /timezone fijan tus preferencias, /forget borra lo que guardo de este número.",
        pt: "Conta: /link liga este número ao seu email, /whoami mostra-o, /unlink remove-o, /name define como lhe chamo, /remember anota algo para mais tarde, /notes lista as notas, /language, /length e /timezone definem as suas preferências, /forget apaga o que guardo deste número.",
        fr: "Compte : /link relie ce numéro à votre e-mail, /whoami l'affiche, /unlink le retire, /name fixe comment je vous appelle, /remember note quelque chose pour plus tard, /notes liste les notes, /language, /length et /timezone règlent vos préférences, /forget efface ce que je garde sur ce numéro.",
        de: "Konto: /link verknüpft diese Nummer mit deiner E-Mail, /whoami zeigt sie, /unlink entfernt sie, /name legt fest, wie ich dich nenne, /remember merkt sich etwas, /notes listet die Notizen, /language, /length und /timezone legen deine Vorlieben fest, /forget löscht, was ich zu dieser Nummer speichere.",
    )
    .to_string()
}

/// Said once per number, after Sandra's first reply.
pub fn link_offer(l: Lang) -> String {
    by_lang!(l,
        en: "Tip: send /link to link this number to your email, so I remember your name, preferences and notes on every number you use. I won't mention it again.",
        es: "Consejo: envía /link para vincular este número a tu correo; así recordaré tu nombre, preferencias y notas en cualquier número que uses. No volveré a mencionarlo.",
        pt: "Dica: envie /link para ligar este número ao seu email; assim lembro o seu nome, preferências e notas em qualquer número que use. Não volto a mencioná-lo.",
        fr: "Astuce : envoyez /link pour relier ce numéro à votre e-mail ; je me souviendrai de votre nom, vos préférences et vos notes sur tous vos numéros. Je ne le redirai pas.",
        de: "Tipp: Schick /link, um diese Nummer mit deiner E-Mail zu verknüpfen; dann kenne ich deinen Namen, deine Vorlieben und Notizen auf jeder Nummer. Ich erwähne es nicht noch einmal.",
    )
    .to_string()
}

/// The code went out to `email` (masked).
pub fn code_sent(l: Lang, email: &str, minutes: i64) -> String {
    by_lang!(l,
        en: format!("I sent a 6-digit code to {email}. Send it to me here within {minutes} minutes. (/cancel to stop.)"),
        es: format!("Envié un código de 6 cifras a {email}. Mándamelo aquí en menos de {minutes} minutos. (/cancel para parar.)"),
        pt: format!("Enviei um código de 6 dígitos para {email}. Envie-mo aqui dentro de {minutes} minutos. (/cancel para parar.)"),
        fr: format!("J'ai envoyé un code à 6 chiffres à {email}. Renvoyez-le-moi ici dans les {minutes} minutes. (/cancel pour arrêter.)"),
        de: format!("Ich habe einen 6-stelligen Code an {email} geschickt. Schick ihn mir hier innerhalb von {minutes} Minuten. (/cancel zum Abbrechen.)"),
    )
}

/// The code mail could not be sent. `refused`: the server refused it for good.
pub fn mail_failed(l: Lang, refused: bool) -> String {
    if refused {
        by_lang!(l,
            en: "The mail server refused to send the code to that address. Please check it and send it again, or another one.",
            es: "El servidor de correo se negó a enviar el código a esa dirección. Revísala y envíala de nuevo, u otra.",
            pt: "O servidor de email recusou enviar o código para esse endereço. Verifique-o e envie-o de novo, ou outro.",
            fr: "Le serveur de messagerie a refusé d'envoyer le code à cette adresse. Vérifiez-la et renvoyez-la, ou une autre.",
            de: "Der Mailserver hat es abgelehnt, den Code an diese Adresse zu schicken. Prüf sie und schick sie noch einmal, oder eine andere.",
        )
    } else {
        by_lang!(l,
            en: "I couldn't send the email right now: the mail server is not answering. Nothing is lost; send your address again in a few minutes.",
            es: "Ahora mismo no pude enviar el correo: el servidor de correo no responde. No se ha perdido nada; vuelve a enviar tu dirección en unos minutos.",
            pt: "Não consegui enviar o email agora: o servidor de email não responde. Nada se perdeu; envie o seu endereço de novo daqui a uns minutos.",
            fr: "Je n'ai pas pu envoyer l'e-mail : le serveur de messagerie ne répond pas. Rien n'est perdu ; renvoyez votre adresse dans quelques minutes.",
            de: "Ich konnte die E-Mail gerade nicht senden: Der Mailserver antwortet nicht. Nichts ist verloren; schick deine Adresse in ein paar Minuten noch einmal.",
        )
    }
    .to_string()
}

/// The code mail: (subject, body).
pub fn code_mail(l: Lang, code: &str) -> (String, String) {
    let (subject, body) = by_lang!(l,
        en: ("Your Sandra code", "Your code to link your WhatsApp number to Sandra is:"),
        es: ("Tu código de Sandra", "Tu código para vincular tu número de WhatsApp con Sandra es:"),
        pt: ("O seu código da Sandra", "O seu código para ligar o seu número de WhatsApp à Sandra é:"),
        fr: ("Votre code Sandra", "Votre code pour relier votre numéro WhatsApp à Sandra est :"),
        de: ("Dein Sandra-Code", "Dein Code, um deine WhatsApp-Nummer mit Sandra zu verknüpfen:"),
    );
    let ignore = by_lang!(l,
        en: "If you did not ask for it, ignore this email.",
        es: "Si no lo pediste, ignora este correo.",
        pt: "Se não o pediu, ignore este email.",
        fr: "Si vous ne l'avez pas demandé, ignorez cet e-mail.",
        de: "Wenn du ihn nicht angefordert hast, ignoriere diese E-Mail.",
    );
    (
        subject.to_string(),
        format!("{body}\n\n    {code}\n\n{ignore}\n"),
    )
}

/// What an account step says (`Said::CodeSent` is worded by `code_sent` once the mail is out).
pub fn account(l: Lang, said: &Said) -> String {
    match said {
        Said::AskEmail => by_lang!(l,
            en: "Which email address should I link this number to? Send it here and I'll email you a 6-digit code. (/cancel to stop.)",
            es: "¿A qué dirección de correo vinculo este número? Envíamela y te mandaré un código de 6 cifras. (/cancel para parar.)",
            pt: "A que endereço de email ligo este número? Envie-mo aqui e mando-lhe um código de 6 dígitos. (/cancel para parar.)",
            fr: "À quelle adresse e-mail dois-je relier ce numéro ? Envoyez-la ici et je vous enverrai un code à 6 chiffres. (/cancel pour arrêter.)",
            de: "Mit welcher E-Mail-Adresse soll ich diese Nummer verknüpfen? Schick sie hier, dann maile ich dir einen 6-stelligen Code. (/cancel zum Abbrechen.)",
        ).to_string(),
        Said::BadEmail => by_lang!(l,
            en: "That doesn't look like an email address. Send one like name@example.com, or /cancel.",
            es: "Eso no parece una dirección de correo. Envía una como nombre@example.com, o /cancel.",
            pt: "Isso não parece um endereço de email. Envie um como nome@example.com, ou /cancel.",
            fr: "Cela ne ressemble pas à une adresse e-mail. Envoyez-en une comme nom@example.com, ou /cancel.",
            de: "Das sieht nicht wie eine E-Mail-Adresse aus. Schick eine wie name@example.com, oder /cancel.",
        ).to_string(),
        Said::Disabled => by_lang!(l,
            en: "Linking by email is not set up on this server.",
            es: "La vinculación por correo no está configurada en este servidor.",
            pt: "A ligação por email não está configurada neste servidor.",
            fr: "La liaison par e-mail n'est pas configurée sur ce serveur.",
            de: "Die Verknüpfung per E-Mail ist auf diesem Server nicht eingerichtet.",
        ).to_string(),
        Said::RateLimited => by_lang!(l,
            en: "Too many codes were asked for in the last hour. Please try again later with /link.",
            es: "Se pidieron demasiados códigos en la última hora. Inténtalo más tarde con /link.",
            pt: "Foram pedidos demasiados códigos na última hora. Tente mais tarde com /link.",
            fr: "Trop de codes ont été demandés dans la dernière heure. Réessayez plus tard avec /link.",
            de: "In der letzten Stunde wurden zu viele Codes angefordert. Versuch es später noch einmal mit /link.",
        ).to_string(),
        Said::CodeSent => code_sent(l, "…", 10),
        Said::WrongCode { left: 0 } => by_lang!(l,
            en: "That code is not right, and that was the last try. Send /link for a new code.",
            es: "Ese código no es correcto y era el último intento. Envía /link para un código nuevo.",
            pt: "Esse código não está certo e era a última tentativa. Envie /link para um código novo.",
            fr: "Ce code n'est pas le bon, et c'était le dernier essai. Envoyez /link pour un nouveau code.",
            de: "Der Code stimmt nicht, und das war der letzte Versuch. Schick /link für einen neuen Code.",
        ).to_string(),
        Said::WrongCode { left } => by_lang!(l,
            en: format!("That code is not right. Tries left: {left}."),
            es: format!("Ese código no es correcto. Intentos restantes: {left}."),
            pt: format!("Esse código não está certo. Tentativas restantes: {left}."),
            fr: format!("Ce code n'est pas le bon. Essais restants : {left}."),
            de: format!("Der Code stimmt nicht. Verbleibende Versuche: {left}."),
        ),
        Said::CodeExpired => by_lang!(l,
            en: "That code has expired. Send /link for a new one.",
            es: "Ese código ha caducado. Envía /link para uno nuevo.",
            pt: "Esse código expirou. Envie /link para um novo.",
            fr: "Ce code a expiré. Envoyez /link pour en obtenir un nouveau.",
            de: "Der Code ist abgelaufen. Schick /link für einen neuen.",
        ).to_string(),
        Said::Linked { email } => by_lang!(l,
            en: format!("Done: this number is linked to {email}."),
            es: format!("Hecho: este número está vinculado a {email}."),
            pt: format!("Feito: este número está ligado a {email}."),
            fr: format!("C'est fait : ce numéro est relié à {email}."),
            de: format!("Erledigt: Diese Nummer ist mit {email} verknüpft."),
        ),
        Said::Cancelled => by_lang!(l,
            en: "Linking cancelled.",
            es: "Vinculación cancelada.",
            pt: "Ligação cancelada.",
            fr: "Liaison annulée.",
            de: "Verknüpfung abgebrochen.",
        ).to_string(),
        Said::WhoAmI { email, name } => {
            let linked = match email {
                Some(e) => by_lang!(l,
                    en: format!("This number is linked to {e}."),
                    es: format!("Este número está vinculado a {e}."),
                    pt: format!("Este número está ligado a {e}."),
                    fr: format!("Ce numéro est relié à {e}."),
                    de: format!("Diese Nummer ist mit {e} verknüpft."),
                ),
                None => by_lang!(l,
                    en: "This number is not linked to an account; /link links it.",
                    es: "Este número no está vinculado a ninguna cuenta; /link lo vincula.",
                    pt: "Este número não está ligado a nenhuma conta; /link liga-o.",
                    fr: "Ce numéro n'est relié à aucun compte ; /link le relie.",
                    de: "Diese Nummer ist mit keinem Konto verknüpft; /link verknüpft sie.",
                ).to_string(),
            };
            match name {
                Some(n) => format!("{linked} {}", by_lang!(l,
                    en: format!("I call you {n}."),
                    es: format!("Te llamo {n}."),
                    pt: format!("Chamo-lhe {n}."),
                    fr: format!("Je vous appelle {n}."),
                    de: format!("Ich nenne dich {n}."),
                )),
                None => linked,
            }
        }
        Said::Unlinked => by_lang!(l,
            en: "Done: this number is no longer linked to your account.",
            es: "Hecho: este número ya no está vinculado a tu cuenta.",
            pt: "Feito: este número já não está ligado à sua conta.",
            fr: "C'est fait : ce numéro n'est plus relié à votre compte.",
            de: "Erledigt: Diese Nummer ist nicht mehr mit deinem Konto verknüpft.",
        ).to_string(),
        Said::NotLinked => by_lang!(l,
            en: "This number is not linked to an account.",
            es: "Este número no está vinculado a ninguna cuenta.",
            pt: "Este número não está ligado a nenhuma conta.",
            fr: "Ce numéro n'est relié à aucun compte.",
            de: "Diese Nummer ist mit keinem Konto verknüpft.",
        ).to_string(),
        Said::ForgetConfirm => by_lang!(l,
            en: "This erases everything I store about this number: our conversation, its summary, the link, and your name and notes (those stay only if another number is linked to the same account). To confirm, send: /forget yes",
            es: "Esto borra todo lo que guardo de este número: nuestra conversación, su resumen, la vinculación, y tu nombre y notas (solo se quedan si otro número está vinculado a la misma cuenta). Para confirmar, envía: /forget yes",
            pt: "Isto apaga tudo o que guardo deste número: a nossa conversa, o seu resumo, a ligação, e o seu nome e notas (só ficam se outro número estiver ligado à mesma conta). Para confirmar, envie: /forget yes",
            fr: "Cela efface tout ce que je garde sur ce numéro : notre conversation, son résumé, la liaison, et votre nom et vos notes (ils restent seulement si un autre numéro est relié au même compte). Pour confirmer, envoyez : /forget yes",
            de: "Das löscht alles, was ich zu dieser Nummer speichere: unser Gespräch, seine Zusammenfassung, die Verknüpfung sowie deinen Namen und deine Notizen (die bleiben nur, wenn eine andere Nummer mit demselben Konto verknüpft ist). Zum Bestätigen schick: /forget yes",
        ).to_string(),
        Said::Forgotten => by_lang!(l,
            en: "Done: I have erased everything I stored about this number.",
            es: "Hecho: he borrado todo lo que guardaba de este número.",
            pt: "Feito: apaguei tudo o que guardava deste número.",
            fr: "C'est fait : j'ai effacé tout ce que je gardais sur ce numéro.",
            de: "Erledigt: Ich habe alles gelöscht, was ich zu dieser Nummer gespeichert hatte.",
        ).to_string(),
        Said::Noted { note } => by_lang!(l,
            en: format!("Noted: “{note}”. /notes lists what I remember."),
            es: format!("Anotado: «{note}». /notes lista lo que recuerdo."),
            pt: format!("Anotado: «{note}». /notes lista o que eu lembro."),
            fr: format!("Noté : « {note} ». /notes liste ce dont je me souviens."),
            de: format!("Notiert: „{note}“. /notes zeigt, was ich mir merke."),
        ),
        Said::Notes(notes) if notes.is_empty() => by_lang!(l,
            en: "I have no notes about you yet. Say “remember that …” or /remember … to add one.",
            es: "Aún no tengo notas sobre ti. Di «recuerda que …» o /remember … para añadir una.",
            pt: "Ainda não tenho notas sobre si. Diga «lembra que …» ou /remember … para juntar uma.",
            fr: "Je n'ai encore aucune note sur vous. Dites « souviens-toi que … » ou /remember … pour en ajouter une.",
            de: "Ich habe noch keine Notizen über dich. Sag „merk dir, dass …“ oder /remember …, um eine hinzuzufügen.",
        ).to_string(),
        Said::Notes(notes) => {
            let head = by_lang!(l,
                en: "What I remember about you:",
                es: "Lo que recuerdo de ti:",
                pt: "O que lembro sobre si:",
                fr: "Ce dont je me souviens à votre sujet :",
                de: "Was ich mir über dich merke:",
            );
            let lines: Vec<String> = notes
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{}. {n}", i + 1))
                .collect();
            format!("{head}\n{}", lines.join("\n"))
        }
        Said::Named { name } => by_lang!(l,
            en: format!("Nice to meet you, {name}. I'll call you that."),
            es: format!("Encantada, {name}. Te llamaré así."),
            pt: format!("Muito prazer, {name}. Vou chamar-lhe assim."),
            fr: format!("Enchantée, {name}. Je vous appellerai ainsi."),
            de: format!("Freut mich, {name}. So nenne ich dich."),
        ),
        Said::Preference { value: Some(v) } => by_lang!(l,
            en: format!("Done: I'll keep to “{v}”."),
            es: format!("Hecho: me atendré a «{v}»."),
            pt: format!("Feito: vou seguir «{v}»."),
            fr: format!("C'est fait : je m'en tiendrai à « {v} »."),
            de: format!("Erledigt: Ich halte mich an „{v}“."),
        ),
        Said::Preference { value: None } => by_lang!(l,
            en: "Done: back to the default.",
            es: "Hecho: vuelvo a lo predeterminado.",
            pt: "Feito: de volta ao padrão.",
            fr: "C'est fait : retour au réglage par défaut.",
            de: "Erledigt: zurück zur Voreinstellung.",
        ).to_string(),
        Said::BadPreference => by_lang!(l,
            en: "I didn't understand that setting. Use /language followed by a two-letter code (en, es, pt, fr, de…) or auto, /length short, long or auto, and /timezone with a zone such as Europe/Lisbon, or auto.",
            es: "No entendí ese ajuste. Usa /language seguido de un código de dos letras (en, es, pt, fr, de…) o auto, /length short, long o auto, y /timezone con una zona como Europe/Madrid, o auto.",
            pt: "Não percebi essa definição. Use /language seguido de um código de duas letras (en, es, pt, fr, de…) ou auto, /length short, long ou auto, e /timezone com um fuso como Europe/Lisbon, ou auto.",
            fr: "Je n'ai pas compris ce réglage. Utilisez /language suivi d'un code à deux lettres (en, es, pt, fr, de…) ou auto, /length short, long ou auto, et /timezone avec un fuseau comme Europe/Paris, ou auto.",
            de: "Diese Einstellung habe ich nicht verstanden. Nutze /language mit einem Zwei-Buchstaben-Code (en, es, pt, fr, de…) oder auto, /length short, long oder auto, und /timezone mit einer Zone wie Europe/Berlin, oder auto.",
        ).to_string(),
        Said::PrivateOnly => by_lang!(l,
            en: "Please send me that in a private chat: your account is not the group's business.",
            es: "Envíame eso en un chat privado, por favor: tu cuenta no es asunto del grupo.",
            pt: "Envie-me isso numa conversa privada, por favor: a sua conta não é assunto do grupo.",
            fr: "Envoyez-moi cela en message privé, s'il vous plaît : votre compte ne regarde pas le groupe.",
            de: "Schick mir das bitte im privaten Chat: Dein Konto geht die Gruppe nichts an.",
        ).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_words() {
        assert_eq!(duration(Lang::En, 900.0), "15 minutes");
        assert_eq!(duration(Lang::En, 60.0), "1 minute");
        assert_eq!(duration(Lang::En, 90.0), "1 minute 30 seconds");
        assert_eq!(duration(Lang::En, 1.0), "1 second");
        assert_eq!(duration(Lang::En, 0.4), "1 second");
        assert_eq!(duration(Lang::Es, 900.0), "15 minutos");
        assert_eq!(
            voice_truncated(Lang::En, 900.0),
            "Your voice note is longer than 15 minutes; I only listened to the first 15 minutes."
        );
    }

    #[test]
    fn language_is_told_only_from_enough_words() {
        assert_eq!(
            Lang::detect("¿Qué tiempo hará mañana en Madrid? Quiero salir a pasear con mis hijos."),
            Some(Lang::Es)
        );
        assert_eq!(
            Lang::detect("Can you tell me what the weather will be like tomorrow in London?"),
            Some(Lang::En)
        );
        assert_eq!(
            Lang::detect("Bom dia! Pode dizer-me a que horas abre a farmácia amanhã?"),
            Some(Lang::Pt)
        );
        // Too short to tell: no switch away from the default.
        assert_eq!(Lang::detect("Lisboa"), None);
        assert_eq!(Lang::detect("ok"), None);
        // A language without texts: English stays.
        assert_eq!(
            Lang::detect("Какая завтра будет погода в Москве, скажите пожалуйста?"),
            None
        );
        assert_eq!(Lang::from_code("es"), Some(Lang::Es));
        assert_eq!(Lang::from_code("ru"), None);
    }

    #[test]
    fn every_text_exists_in_every_language() {
        for l in [Lang::En, Lang::Es, Lang::Pt, Lang::Fr, Lang::De] {
            for t in [
                help(l),
                unknown_command(l, "x"),
                reset_done(l),
                wait_notice(l),
                brain_failed(l),
                poison_apology(l),
                rate_notice(l),
                cannot_open(l, MediaWord::Video),
                cannot_read(l, "poll"),
                voice_truncated(l, 90.0),
                nothing_seen(l, MediaWord::Photo),
                document_empty(l),
            ] {
                assert!(!t.trim().is_empty());
            }
            for p in [
                SightProblem::Gone,
                SightProblem::TooLarge,
                SightProblem::Download,
                SightProblem::Undecodable,
                SightProblem::Unsupported,
                SightProblem::Encrypted,
                SightProblem::Failed,
            ] {
                let t = sight_problem(l, &p, MediaWord::Photo);
                assert!(!t.trim().is_empty());
                assert_eq!(
                    t == sight_problem(Lang::En, &p, MediaWord::Photo),
                    l == Lang::En,
                    "{l:?} {p:?}"
                );
            }
            // Only English reads as English.
            assert_eq!(
                brain_failed(l) == brain_failed(Lang::En),
                l == Lang::En,
                "{l:?}"
            );
        }
    }

    /// Every account text exists in every language, and only English reads as English.
    #[test]
    fn account_texts_are_translated() {
        let all = [
            Said::AskEmail,
            Said::BadEmail,
            Said::Disabled,
            Said::RateLimited,
            Said::WrongCode { left: 0 },
            Said::WrongCode { left: 2 },
            Said::CodeExpired,
            Said::Linked {
                email: "a***@x.org".into(),
            },
            Said::Cancelled,
            Said::WhoAmI {
                email: None,
                name: Some("Ana".into()),
            },
            Said::WhoAmI {
                email: Some("a***@x.org".into()),
                name: None,
            },
            Said::Unlinked,
            Said::NotLinked,
            Said::ForgetConfirm,
            Said::Forgotten,
            Said::Noted { note: "tea".into() },
            Said::Notes(vec![]),
            Said::Notes(vec!["tea".into()]),
            Said::Named { name: "Ana".into() },
            Said::Preference {
                value: Some("short".into()),
            },
            Said::Preference { value: None },
            Said::BadPreference,
            Said::PrivateOnly,
        ];
        for l in [Lang::Es, Lang::Pt, Lang::Fr, Lang::De] {
            for said in &all {
                assert_ne!(account(l, said), account(Lang::En, said), "{l:?} {said:?}");
            }
            assert_ne!(account_help(l), account_help(Lang::En));
            assert_ne!(link_offer(l), link_offer(Lang::En));
            assert_ne!(code_sent(l, "a", 10), code_sent(Lang::En, "a", 10));
            assert_ne!(mail_failed(l, true), mail_failed(Lang::En, true));
            assert_ne!(mail_failed(l, false), mail_failed(Lang::En, false));
            assert_ne!(code_mail(l, "123456"), code_mail(Lang::En, "123456"));
            assert!(code_mail(l, "123456").1.contains("123456"));
        }
    }
}
