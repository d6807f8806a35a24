"""The sentences and names the triage example's tickets are assembled from (generate.py draws
from them; changing a table changes the generated files, which `generate.py --check` reports)."""

FIRST = ("Maria", "James", "Aisha", "Tom", "Priya", "Daniel", "Chloe", "Omar", "Grace", "Luis", "Hannah", "Kenji",
         "Fatima", "Peter", "Sofia", "Marcus", "Elena", "Ravi", "Julia", "Samuel", "Nadia", "Owen", "Mei", "Carlos",
         "Ingrid", "Tariq", "Rosa", "Victor", "Leah", "Andre", "Yuki", "Brendan", "Amara", "Felix", "Zoe", "Hugo")
LAST = ("Okafor", "Lindqvist", "Patel", "Brennan", "Moreau", "Nakamura", "Hughes", "Castillo", "Weber", "Osei",
        "Romano", "Fischer", "Kowalski", "Haddad", "Murphy", "Jensen", "Alvarez", "Chen", "Dubois", "Sato",
        "Novak", "Adeyemi", "Larsen", "Quinn", "Ibrahim", "Schmidt", "Reyes", "Walsh", "Tanaka", "Byrne")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
ROOMS = ("kitchen", "hallway", "nursery", "basement", "garage", "upstairs landing", "living room", "bedroom")
STREETS = ("Maple Avenue", "Harbour Road", "Linden Street", "Quarry Lane", "Elm Court", "Station Road",
           "Birch Drive", "Canal Street", "Orchard Way", "Hillcrest Road")
CITIES = ("Portland", "Leeds", "Madison", "Galway", "Tacoma", "Dundee", "Boise", "Halifax", "Ghent", "Asheville")
COMPANIES = ("Brightwater Dental", "Okafor & Sons Joinery", "Northgate Logistics", "Cedar Lane Pharmacy",
             "Pinecrest Property Management", "Lumen Architects", "Harbourside Vets", "Tallow Street Bakery")
TITLES = ("Office Manager", "Operations Lead", "Owner", "Facilities Coordinator", "Practice Manager", "Director")
RELATIONS = ("wife", "husband", "partner", "daughter", "son", "mother", "father", "flatmate", "dog sitter")
VULNERABLE = ("newborn", "two-month-old baby", "90-year-old mother", "father on oxygen", "toddler", "sick child")

# How customers name each product (the label is the key, the ticket uses a phrase).
PHRASES = {
    "alarm": ("alarm panel", "alarm system", "security panel", "alarm keypad", "alarm base station"),
    "camera": ("outdoor camera", "doorbell camera", "indoor camera", "floodlight camera", "garden camera"),
    "thermostat": ("thermostat", "smart thermostat", "hallway thermostat", "thermostat upstairs"),
    "lock": ("smart lock", "front door lock", "back door deadbolt", "keypad lock"),
    "detector": ("smoke detector", "CO detector", "carbon monoxide detector", "smoke and CO detector"),
}

GREETINGS = ("Hi,", "Hello,", "Hello Hearthline team,", "Hi there,", "Good morning,", "Good afternoon,",
             "To whom it may concern,", "Hey support,", "Dear Hearthline,", "", "", "")
CONTEXT = ("I've been a customer for {n} years.", "We moved into this house in {month}.",
           "I bought the {pp} from your website last {weekday}.", "My account is under {first} {last}.",
           "We have the {pp} and a couple of other Hearthline devices.", "The installer set everything up in {month}.",
           "I'm writing on behalf of my {relation}, who is not very technical.", "", "", "")
SIGNOFFS = ("Thanks,\n{first}", "Regards,\n{first} {last}", "Cheers, {first}", "Thank you,\n{first} {last}",
            "- {first}", "Best,\n{first}", "{first} {last}", "Many thanks, {first}")

LOW = ("Whenever you get a chance is fine.", "Take your time with this one.", "It can wait until next week.",
       "Low priority on my end.", "Just flagging it for whenever someone is free.", "No hurry at all.")
HIGH = ("I need this sorted today, please.", "Please treat this as a priority, this is the third time I'm writing.",
        "This has to be fixed before I travel on {weekday}.",
        "I've been waiting {n} days and I'm running out of patience.",
        "Please escalate this, it's costing me money every day.", "I need an answer as soon as possible.")
NEUTRAL = ("Let me know if you need anything else from me.", "Thanks in advance for your help.",
           "I can send photos if that helps.", "My order number is {order} if you need it.", "")
# An outage is urgent whatever the tone: calm wording is the feared tail, panicked wording the easy case.
OUTAGE_TONE = ("No rush, but I thought you should know.", "Whenever someone has a moment.",
               "Not a big deal probably, just letting you know.", "Please help right away.",
               "We are really worried.", "Please call me back as soon as you can.", "", "")

PLAN = ("monitoring plan for my {pp}", "{pp} subscription", "cloud plan for the {pp}", "Protect plan for the {pp}")
ISSUES = {
    "billing": (
        "I was charged twice for the {plan} this month, ${amt} each time.",
        "My card was charged ${amt} after I cancelled the {plan} on {month} {day}.",
        "The price of my {plan} went from ${amt} to ${amt2} without any notice.",
        "I can't find the invoice for my {plan} for {month}.",
        "There is a ${amt} charge labelled HEARTHLINE {code} on my statement that I don't recognise.",
        "I switched to yearly billing for the {plan} but was still charged the monthly ${amt}.",
    ),
    "shipping": (
        "My order {order} for a {pp} was supposed to arrive on {month} {day} and it still hasn't shown up.",
        "The {pp} from order {order} arrived with a cracked housing.",
        "I ordered a {pp} (order {order}) but the box had a {other} in it.",
        "Tracking for order {order} has said 'label created' for {n} days.",
        "The courier left the {pp} from order {order} at the wrong address on {street}.",
        "Order {order} arrived without the mounting kit for the {pp}.",
    ),
    "technical": (
        "The app crashes every time I open the settings for the {pp}.",
        "The batteries in my {pp} run flat in about {n} weeks.",
        "The {pp} shows the wrong time in the app, about {n} hours off.",
        "I can't pair the new {pp} with the app, it times out at the last step.",
    ),
    "account": (
        "I need to reset my password but the reset email never arrives.",
        "Please change the email on my account to {first}.{last}{n}@example.com.",
        "How do I add my {relation} as a second user for the {pp}?",
        "We sold the house and need to transfer the {pp} to the new owners.",
        "I lost the phone I use for two-factor login and can't get into the app.",
        "My account still shows my old address on {street}, please update it.",
    ),
}
# Technical faults that leave a safety device working; never said of an alarm or a detector,
# where a dead link or a bricked unit would be an outage.
NON_SAFETY_TECHNICAL = (
    "My {pp} won't connect to the wifi since I changed my router.",
    "The firmware update for the {pp} stopped halfway and now it blinks {color}.",
    "The night mode on my {pp} keeps switching itself off.",
)
NON_SAFETY = ("camera", "thermostat", "lock")
OUTAGES = {
    "alarm": (
        "My {pp} says 'monitoring offline' and the test signal never reached your monitoring center.",
        "Since {time} the {pp} has had no link to the monitoring center and the keypad shows a communication fault.",
        "After the power cut the {pp} went dead and it will not arm at all.",
    ),
    "detector": (
        "The {pp} in the {room} has shown offline in the app since {time}, so nobody would be alerted to a fire.",
        "The {pp} in the {room} lost its connection to the hub and your center is not receiving its signals.",
    ),
    "lock": (
        "The {pp} is stuck unlocked and ignores the app and the keypad, and I'm away from home.",
        "Our {pp} will not lock, the house is open and we are away until {weekday}.",
    ),
    "thermostat": (
        "The {pp} shut the heating off and won't turn it back on; it is {temp} degrees outside and we have a "
        "{vulnerable} at home.",
        "The {pp} is stuck on cooling and unresponsive, the house is at {temp} degrees with a {vulnerable} here.",
    ),
    "camera": (
        "Every camera on my account went offline at {time} and the monitoring center says it cannot verify alarms.",
        "The {pp} that covers our entrance is offline and the monitoring center can't see the alarm zone it watches.",
    ),
}
OUTAGE_DETAIL = ("The app shows error code E{n}.", "I already restarted the hub twice.",
                 "My neighbour says theirs is down too.", "The status page says everything is fine.",
                 "I pay for professional monitoring for exactly this reason.", "", "")
DETAIL = {
    "billing": ("My bank statement shows it on {month} {day}.", "I've attached a screenshot of the statement.", ""),
    "shipping": ("I was home all day and no one came.", "The box itself looked fine.", ""),
    "technical": ("I already tried turning it off and on again.", "The light on the front is {color}.",
                  "It worked fine for the first {n} weeks.", ""),
    "account": ("I'm the account holder.", "I can verify my identity however you need.", ""),
}
REFUND_YES = {
    "billing": ("Please refund the extra charge.", "I want that money refunded to my card.",
                "I'd like a refund for {month}.", "Please reverse the charge and refund me."),
    "shipping": ("I'd like my money back instead of a replacement.", "Please cancel it and refund the order.",
                 "Just refund me, please."),
    "technical": ("If it can't be fixed I want to return it for a refund.",
                  "I'd like to send it back and get my money back."),
    "account": ("Please close the account and refund the months I haven't used.",),
    "outage": ("I expect a credit for the days the monitoring was down.",
               "I want a refund for this month's monitoring.", "Please refund the monitoring fee for this period."),
}
REFUND_NO = {
    "billing": ("Please make sure it's right from next month.", "Can you send me a corrected invoice?",
                "Could you explain what the charge is for?", "Can you check what happened?"),
    "shipping": ("Please send a replacement.", "Can you tell me where it is?", "Please ship the right one.",
                 "Can you arrange a new delivery?"),
    "technical": ("What should I try next?", "Is there a fix for this?", "Can someone walk me through it?",
                  "Could a technician take a look?"),
    "account": ("Please update it for me.", "How do I do that?", "What do you need from me to do this?"),
    "outage": ("Please get it back online.", "Send someone out or tell me what to do.", "What do I do now?",
               "Please check it from your side.", ""),
}

# Negation: a sentence that rules a wrong reading out. (negated queue, queues it may go with, text)
QUEUE_NEGATIONS = (
    ("billing", ("technical", "account", "shipping"),
     "This is not a billing question, the charges on my account are fine."),
    ("billing", ("technical", "shipping"), "I'm not disputing any charge."),
    ("shipping", ("technical", "account"), "This isn't about shipping, the box arrived on time and in one piece."),
    ("technical", ("billing", "account"), "The {pp} itself works fine, this is not a technical problem."),
    ("account", ("billing", "technical"), "It's not about my login or account details."),
    ("outage", ("billing", "account", "technical"),
     "This is not an outage, the {pp} is working and monitoring is fine."),
    ("outage", ("billing", "technical"), "Nothing is down and nobody is in danger, to be clear."),
)
REFUND_NEGATIONS = ("I'm not asking for a refund, I just want it sorted.", "I don't want my money back.",
                    "No refund needed, to be clear.")
PRIORITY_NEGATIONS = ("It's not urgent.", "This is not an emergency.", "Not time-sensitive at all.")
PRODUCT_NEGATIONS = ("The problem isn't my {neg}, it's the {pp}.", "It's not the {neg} this time but the {pp}.")

SUBJECTS = {"billing": ("Question about my bill", "Charge on my card", "Invoice"),
            "shipping": ("Where is my order", "Delivery problem", "Order issue"),
            "technical": ("Device not working properly", "Help with setup", "Problem with my device"),
            "account": ("Account change", "Login problem", "Update my details")}
DISCLAIMERS = (
    "CONFIDENTIALITY NOTICE: This email and any attachments are for the sole use of the intended recipient and may "
    "contain confidential and privileged information of {company}. Any unauthorised review, use, disclosure or "
    "distribution is prohibited. If you are not the intended recipient, please contact the sender by reply email "
    "and destroy all copies of the original message.",
    "This message was sent from {company}. It may contain information that is confidential or legally privileged. "
    "If you received it in error, please tell the sender and delete it; do not copy it or use it for any purpose. "
    "{company} accepts no liability for viruses transmitted by email.",
    "Please consider the environment before printing this email. The views expressed here are the sender's own and "
    "not necessarily those of {company}. Our office hours are {hours}; messages received outside those hours are "
    "answered on the next working day.",
    "IMPORTANT: {company} will never ask you to change bank details by email. If you receive such a request, call "
    "us on the number on our website before acting on it. This email is intended only for its addressee.",
)
AUTOREPLIES = (
    "Thank you for contacting Hearthline Support. Your request has been received and assigned ticket number "
    "{ticket}. One of our team will reply within {hours2} hours. For anything safety related, such as an alarm "
    "that will not arm or a detector that is offline, please call our monitoring line instead of replying to this "
    "email. You can check the status of your ticket at any time in the Hearthline app under Help.",
    "Hi {first}, thanks for getting in touch. This is an automatic confirmation that we have your message "
    "(ticket {ticket}). Our support hours are {hours}. Many questions are answered in our help center, including "
    "how to reset a device, update payment details and track an order. Please keep the ticket number in the "
    "subject line if you write again.",
    "Hello {first}, we're sorry to hear you are having trouble. Your case {ticket} is now in our queue. Replies "
    "usually take {hours2} hours on working days. Please do not open a second ticket for the same issue, as this "
    "can slow things down. Kind regards, the Hearthline Support team.",
)
OLD_ISSUES = ("My order {order} hasn't arrived yet.", "I was charged ${amt} twice in {month}.",
              "The {pp} app wouldn't let me log in.", "The {pp} kept beeping after the battery change.")
OLD_ANSWERS = ("Your replacement has shipped and this ticket is now resolved.",
               "We've refunded the duplicate payment; it can take five working days to appear.",
               "Your password has been reset, please try again.", "A firmware fix was pushed to your device.")
