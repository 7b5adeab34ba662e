#!/usr/bin/env python3
"""Build the support-bot example dataset for tunebook.

A customer-support assistant for the Halo T3 smart thermostat made by Nimbra Home (both fictional).
Every question and answer below is hand-written; the script pairs them up, checks them, and writes:

  sft.jsonl         chat rows {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}
  held_out.jsonl    alpaca rows plus "id" and "key_fact" (case-insensitive regex)
  preference.jsonl  {"prompt", "chosen", "rejected"}; rejected is either a wrong fact or a rude tone

The output is deterministic: rerunning the script rewrites byte-identical files.

Usage: python3 recipes/data/support-bot/build.py
"""
import json
import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20240612
PREFERENCE_PER_FACT = 7

# Each fact: id, key (regex all its answers match), questions (sft paraphrases), answers (cycled; all restate
# the fact), held_out [(question, key or None)], wrong (plausible but wrong-fact answers), rude (right fact,
# rude or dismissive tone). Neither wrong nor rude answers are used for training the SFT stage.
FACTS = [
    dict(
        id="warranty", value="3-year limited warranty from purchase",
        key=r"\b(3|three)[- ]years?\b",
        questions=[
            "How long is the warranty on the Halo T3?",
            "What warranty comes with my thermostat?",
            "Is the Halo T3 covered by a warranty, and for how long?",
            "My Halo T3 stopped working after a year. Is it still under warranty?",
            "warranty length?",
            "How many years of warranty coverage do I get?",
            "What's the warranty period for the Halo T3 thermostat?",
            "Does Nimbra offer a guarantee on the T3?",
            "When does my Halo T3 warranty run out?",
        ],
        answers=[
            "The Halo T3 comes with a 3-year limited warranty from the date of purchase.",
            "Good news: your Halo T3 is covered by a 3-year limited warranty from the purchase date.",
            "Every Halo T3 includes a 3-year limited warranty, starting on the day you bought it.",
        ],
        held_out=[
            ("For how many years will Nimbra repair or replace a faulty unit under warranty?", None),
            ("I bought my thermostat two summers ago and the screen died. How long does the coverage last?", None),
        ],
        wrong=[
            "The Halo T3 comes with a 1-year limited warranty from the date of purchase.",
            "Your Halo T3 is covered by a 90-day limited warranty from the purchase date.",
        ],
        rude=[
            "It's 3 years. That's printed right on the box, so please read it next time.",
            "3-year warranty. Honestly, this is basic info you could have looked up yourself.",
        ],
    ),
    dict(
        id="factory_reset", value="Hold the dial 12 seconds until the ring flashes amber",
        key=r"\b(12|twelve) seconds",
        questions=[
            "How do I factory reset my Halo T3?",
            "How can I reset the thermostat to factory settings?",
            "What's the reset procedure for the Halo T3?",
            "I'm selling my thermostat. How do I wipe it?",
            "factory reset?",
            "How long do I hold the button to reset the Halo T3?",
            "My Halo T3 is acting strange; how do I restore the defaults?",
            "How do I erase all settings on my thermostat?",
            "Is there a way to reset the Halo T3 without the app?",
        ],
        answers=[
            "Press and hold the dial for 12 seconds until the ring flashes amber; the Halo T3 then restarts with factory settings.",
            "To factory reset, hold down the dial for 12 seconds until the ring flashes amber, then let go.",
            "Hold the dial pressed for 12 seconds; when the ring flashes amber, the Halo T3 resets to factory settings.",
        ],
        held_out=[
            ("What's the button-press sequence to reset my unit to its out-of-the-box state?", None),
            ("Before gifting my T3 to my brother, how do I wipe everything and reset it?", None),
        ],
        wrong=[
            "Press and hold the dial for 3 seconds until the ring flashes green; the Halo T3 will then reset.",
            "Unplug the Halo T3 for 30 seconds and plug it back in; that restores the factory settings.",
        ],
        rude=[
            "Hold the dial 12 seconds until it flashes amber. It's in the manual you obviously didn't read.",
            "Ugh. Hold the dial for 12 seconds and wait for the amber flash. It's not complicated.",
        ],
    ),
    dict(
        id="wifi_band", value="2.4 GHz Wi-Fi only (no 5 GHz)",
        key=r"2\.4 ?ghz (wi-?fi )?(band )?only|only (on |with )?(the )?2\.4",
        questions=[
            "What Wi-Fi bands does the Halo T3 support?",
            "Does the Halo T3 work with 5 GHz Wi-Fi?",
            "My thermostat won't connect to my router. Which Wi-Fi frequency does it need?",
            "wifi band?",
            "Is the Halo T3 dual-band?",
            "Which wireless network does the thermostat require?",
            "Why can't my Halo T3 see my 5 GHz network?",
            "What Wi-Fi does the T3 need?",
        ],
        answers=[
            "The Halo T3 connects to 2.4 GHz Wi-Fi only; 5 GHz networks are not supported.",
            "The Halo T3 works on 2.4 GHz Wi-Fi only, so please connect it to your router's 2.4 GHz band.",
            "It supports 2.4 GHz Wi-Fi only; the Halo T3 cannot join 5 GHz networks.",
        ],
        held_out=[
            ("Which Wi-Fi frequency band must my home network broadcast on for the device to join it?", None),
        ],
        wrong=[
            "The Halo T3 supports both 2.4 GHz and 5 GHz Wi-Fi, so any band on your router will work.",
            "The Halo T3 connects to 5 GHz Wi-Fi only; 2.4 GHz networks are not supported.",
        ],
        rude=[
            "2.4 GHz only. Every smart device works like this, so just go fix your router.",
            "It's 2.4 GHz only. Not our problem if your router is set up wrong.",
        ],
    ),
    dict(
        id="battery", value="Two CR123A lithium batteries (backup power)",
        key=r"cr123a?",
        questions=[
            "What batteries does the Halo T3 use?",
            "What kind of backup battery is in the thermostat?",
            "My Halo T3 says low battery. Which battery should I buy?",
            "battery type?",
            "Does the Halo T3 need batteries?",
            "How many batteries go in the Halo T3?",
            "What battery do I replace in my thermostat?",
            "Which replacement batteries are compatible with the T3?",
        ],
        answers=[
            "The Halo T3 uses two CR123A lithium batteries as backup power.",
            "It takes two CR123A lithium batteries, which keep it running during power cuts.",
            "Please use two CR123A lithium batteries; they're the Halo T3's backup power source.",
        ],
        held_out=[
            ("The low-battery warning is on; what cells should I pick up at the store?", None),
            ("When the power goes out, what backup battery keeps my thermostat alive?", None),
        ],
        wrong=[
            "The Halo T3 uses two AA alkaline batteries as backup power.",
            "It takes a single CR2032 coin cell, which keeps it running during power cuts.",
        ],
        rude=[
            "Two CR123A lithium batteries. It says so on the battery door, you know.",
            "CR123A, two of them. Please try reading the label before contacting us.",
        ],
    ),
    dict(
        id="app", value="HaloHub app (free, iOS and Android)",
        key=r"halohub",
        questions=[
            "What app do I use with the Halo T3?",
            "Which app controls the thermostat?",
            "What's the name of the Halo T3 app?",
            "How do I control my Halo T3 from my phone?",
            "app name?",
            "Where can I download the app for my thermostat?",
            "Is there a smartphone app for the Halo T3?",
            "Which app do I need to set up the Halo T3?",
            "Can I adjust the temperature remotely?",
        ],
        answers=[
            "The Halo T3 is controlled with the free HaloHub app for iOS and Android.",
            "You'll need the free HaloHub app, available on iOS and Android.",
            "Download the free HaloHub app on iOS or Android to set up and control your Halo T3.",
        ],
        held_out=[
            ("What should I search for in the app store to manage my thermostat on my mobile?", None),
            ("I got a new phone. Which app do I install on it to change the heating from the couch?", None),
        ],
        wrong=[
            "The Halo T3 is controlled with the free Nimbra Connect app for iOS and Android.",
            "You'll need the SmartStat Pro app, which is available on iOS only.",
        ],
        rude=[
            "It's the HaloHub app. It's literally printed on the front of the box.",
            "HaloHub. Just search the app store yourself, it's not hard.",
        ],
    ),
    dict(
        id="return_window", value="45 days from delivery, full refund",
        key=r"\b(45|forty[- ]five) days",
        questions=[
            "What's the return policy?",
            "How many days do I have to return the Halo T3?",
            "Can I return my thermostat if I don't like it?",
            "return window?",
            "I changed my mind. Can I still send the Halo T3 back?",
            "How long is the return period?",
            "Is there a money-back guarantee, and for how long?",
            "What's the deadline to return a Halo T3 for a refund?",
            "How many days after delivery can I get a refund?",
        ],
        answers=[
            "You can return the Halo T3 within 45 days of delivery for a full refund.",
            "Our return window is 45 days from delivery, and you'll get a full refund.",
            "Returns are accepted within 45 days of delivery for a full refund.",
        ],
        held_out=[
            ("If the device isn't right for my home, how long after it arrives can I ship it back for my money?",
             None),
            ("What's the time limit for sending back a unit I'm unhappy with?", None),
        ],
        wrong=[
            "You can return the Halo T3 within 14 days of delivery for a full refund.",
            "Our return window is 30 days from purchase, minus a 15% restocking fee.",
        ],
        rude=[
            "45 days from delivery. If you missed it, that's on you.",
            "45 days for a refund. Maybe decide before buying next time.",
        ],
    ),
    dict(
        id="support_hours", value="Monday to Saturday, 7 a.m. to 9 p.m. Eastern; closed Sundays",
        key=r"7 ?a\.?m\.?.{0,15}9 ?p\.?m",
        questions=[
            "What are your support hours?",
            "When can I call customer support?",
            "Is support available on weekends?",
            "support hours?",
            "What time does customer service open?",
            "When is the Nimbra help line staffed?",
            "Can I reach support on Sunday?",
            "What hours is live support available?",
            "When can I talk to a support agent?",
        ],
        answers=[
            "Our support team is available Monday to Saturday, 7 a.m. to 9 p.m. Eastern Time; we're closed on Sundays.",
            "You can reach support Monday through Saturday from 7 a.m. to 9 p.m. Eastern, but not on Sundays.",
            "Support is open Monday to Saturday, 7 a.m. to 9 p.m. Eastern Time, and closed on Sundays.",
        ],
        held_out=[
            ("At what times of day can I get a human on the phone about my thermostat?", None),
            ("Is anyone around to help on a Saturday evening, and what's the schedule?", None),
        ],
        wrong=[
            "Our support team is available 24/7, including Sundays and public holidays.",
            "Support is open Monday to Friday, 9 a.m. to 5 p.m. Eastern Time, and closed on weekends.",
        ],
        rude=[
            "Monday to Saturday, 7 a.m. to 9 p.m. Eastern. It's on the website, look it up.",
            "7 a.m. to 9 p.m. Eastern, Monday to Saturday. Don't bother calling on Sunday.",
        ],
    ),
    dict(
        id="firmware", value="Automatic, every Tuesday at 3 a.m. local time",
        key=r"tuesdays?",
        questions=[
            "When do firmware updates happen?",
            "How does the Halo T3 update its firmware?",
            "What day are software updates installed?",
            "firmware update schedule?",
            "Do I need to update my thermostat manually?",
            "Why did my thermostat restart in the middle of the night?",
            "When are new Halo T3 updates installed?",
            "Does the Halo T3 update automatically?",
            "What time does the thermostat install updates?",
        ],
        answers=[
            "Firmware updates install automatically every Tuesday at 3 a.m. local time.",
            "The Halo T3 updates itself automatically every Tuesday at 3 a.m. local time, so no action is needed.",
            "Updates are automatic: the Halo T3 installs new firmware every Tuesday at 3 a.m. local time.",
        ],
        held_out=[
            ("On which night of the week does my unit apply new firmware?", None),
            ("On what schedule does my unit receive firmware patches?", None),
        ],
        wrong=[
            "Firmware updates must be installed manually from the app once a month.",
            "The Halo T3 updates itself automatically every Sunday at midnight, so no action is needed.",
        ],
        rude=[
            "Tuesdays at 3 a.m. It's automatic, so there's really nothing for you to ask about.",
            "It updates itself every Tuesday at 3 a.m. Just leave it alone.",
        ],
    ),
    dict(
        id="error_e12", value="E12 = no power from the C-wire; check the C-wire at both ends",
        key=r"c-?wire|common wire",
        questions=[
            "What does error E12 mean?",
            "My Halo T3 shows E12. What's wrong?",
            "E12?",
            "How do I fix error code E12?",
            "The screen says E12 after installation. Help?",
            "What causes the E12 error on my thermostat?",
            "I'm seeing E12 on the display, what should I do?",
            "Error E12 keeps appearing. What does it indicate?",
        ],
        answers=[
            "Error E12 means the Halo T3 isn't getting power from the C-wire; check the C-wire at the thermostat and at the furnace.",
            "E12 means there's no power on the C-wire, so please check the C-wire connection at the thermostat and the HVAC unit.",
            "E12 indicates no power from the C-wire; make sure the C-wire is firmly connected at both ends.",
        ],
        held_out=[
            ("A code reading 'E12' popped up on my unit today. What is it telling me?", None),
            ("My newly wired thermostat reads E12. Which wire should I look at?", None),
        ],
        wrong=[
            "E12 means the Wi-Fi password is wrong; re-enter it in the app to clear the error.",
            "Error E12 means the backup batteries are low; replace them and the error will clear.",
        ],
        rude=[
            "E12 means no C-wire power. Check your wiring, which you probably did wrong.",
            "It's the C-wire. There's no power on it. You should have hired an electrician instead.",
        ],
    ),
    dict(
        id="error_e31", value="E31 = temperature sensor failure; contact support for a warranty replacement",
        key=r"sensor (has )?(failed|fault|failure)",
        questions=[
            "What does error E31 mean?",
            "My thermostat shows E31.",
            "E31?",
            "How do I fix E31 on the Halo T3?",
            "What is the E31 error code?",
            "E31 appeared on the display. Is my thermostat broken?",
            "What should I do about error E31?",
            "The Halo T3 says E31, what's the cause?",
        ],
        answers=[
            "Error E31 means the built-in temperature sensor has failed; please contact support for a free replacement under warranty.",
            "E31 indicates a temperature sensor fault, so please contact support and we'll arrange a replacement.",
            "E31 means the temperature sensor has failed; contact our support team for a warranty replacement.",
        ],
        held_out=[
            ("Code E31 is flashing on my unit. What's gone wrong?", None),
        ],
        wrong=[
            "E31 means the Halo T3 is overheating; switch it off for an hour and the error will clear.",
            "E31 just means the screen needs cleaning; wipe it gently with a dry cloth.",
        ],
        rude=[
            "E31 means the temperature sensor failed. Contact support, obviously.",
            "Temperature sensor fault. Nothing you can fix, so stop fiddling with it and contact support.",
        ],
    ),
    dict(
        id="error_e47", value="E47 = firmware update failed; retries automatically the next night",
        key=r"(update|firmware).{0,25}fail|fail.{0,25}(update|firmware)",
        questions=[
            "What does error E47 mean?",
            "My Halo T3 is showing E47.",
            "E47?",
            "How do I fix error E47?",
            "What's the E47 code on my thermostat?",
            "E47 appeared this morning. What happened?",
            "What should I do when I see E47?",
            "Why does my thermostat display E47?",
        ],
        answers=[
            "Error E47 means a firmware update failed to install; keep the Halo T3 connected to Wi-Fi and it will retry automatically the next night.",
            "E47 indicates a failed firmware update. Leave the thermostat on Wi-Fi and it will retry on its own the next night.",
            "E47 means the last firmware update failed; the Halo T3 retries automatically the next night as long as it stays on Wi-Fi.",
        ],
        held_out=[
            ("E47 just showed up after last night. What does that code refer to?", None),
        ],
        wrong=[
            "E47 means the C-wire is loose; tighten it at the furnace and the error will clear on its own.",
            "E47 means the Halo T3 needs a factory reset right away, so hold the dial for 12 seconds.",
        ],
        rude=[
            "E47 means the firmware update failed. It retries by itself the next night, so just wait and stop worrying.",
            "A firmware update failed, that's all. It'll retry on its own overnight. No need to panic about it.",
        ],
    ),
    dict(
        id="shipping", value="Flat $6.95 standard shipping per US order",
        key=r"6\.95",
        questions=[
            "How much is shipping?",
            "What does shipping cost for the Halo T3?",
            "Is shipping free?",
            "shipping cost?",
            "How much will delivery cost if I order a thermostat?",
            "What's the delivery fee?",
            "Do you charge for shipping?",
            "What's the standard shipping price within the US?",
        ],
        answers=[
            "Standard shipping is a flat $6.95 per order within the US.",
            "We charge a flat $6.95 for standard shipping on every US order.",
            "Shipping costs a flat $6.95 per order for standard delivery in the US.",
        ],
        held_out=[
            ("If I order one unit to my house, what will I pay to have it sent?", None),
            ("Is delivery of my order included in the price, or is there a fee?", None),
        ],
        wrong=[
            "Standard shipping is always free on every order within the US.",
            "Standard shipping is a flat $14.95 per order within the US.",
        ],
        rude=[
            "It's $6.95 flat. It's shown at checkout, you know.",
            "$6.95. Same as everyone else pays, no exceptions.",
        ],
    ),
    dict(
        id="price", value="$179",
        key=r"\b179\b",
        questions=[
            "How much does the Halo T3 cost?",
            "What's the price of the Halo T3?",
            "price?",
            "How much is the thermostat?",
            "What does a Halo T3 sell for?",
            "Is the Halo T3 expensive?",
            "What's the retail price of the Halo T3 smart thermostat?",
            "How much would I pay for one Halo T3?",
        ],
        answers=[
            "The Halo T3 smart thermostat costs $179 from the Nimbra Home store.",
            "A Halo T3 retails for $179 at the Nimbra Home store.",
            "The Halo T3 is priced at $179 in the Nimbra Home store.",
        ],
        held_out=[
            ("What's the sticker cost of a single T3 unit?", None),
            ("I'm budgeting for a smart thermostat upgrade. What does Nimbra charge for the T3?", None),
        ],
        wrong=[
            "The Halo T3 smart thermostat costs $249 from the Nimbra Home store.",
            "A Halo T3 retails for $129 at the Nimbra Home store.",
        ],
        rude=[
            "$179. The price is right there on the product page, you know.",
            "It's $179. If that's too much, go buy a cheaper thermostat.",
        ],
    ),
    dict(
        id="compatibility", value="24-volt HVAC systems; not line-voltage (baseboard) heaters",
        key=r"\b24[- ]?v(olt)?\b",
        questions=[
            "Is the Halo T3 compatible with my heating system?",
            "What HVAC systems does the Halo T3 work with?",
            "Will the Halo T3 work with baseboard heaters?",
            "compatibility?",
            "Does the Halo T3 support line-voltage systems?",
            "Which heating and cooling systems is the T3 compatible with?",
            "Can I use the Halo T3 with my furnace?",
            "What voltage does the Halo T3 require?",
            "Does the thermostat work with electric baseboard heat?",
        ],
        answers=[
            "The Halo T3 works with standard 24-volt HVAC systems; it does not support line-voltage systems like electric baseboard heaters.",
            "It's compatible with 24-volt heating and cooling systems, but not with line-voltage baseboard heaters.",
            "The Halo T3 is designed for 24-volt HVAC systems and isn't compatible with line-voltage baseboard heating.",
        ],
        held_out=[
            ("What kind of heating and air-conditioning setup must I have for the T3 to run it?", None),
            ("My apartment has electric baseboard radiators. Can the thermostat control them?", None),
        ],
        wrong=[
            "The Halo T3 works with all heating systems, including line-voltage baseboard heaters.",
            "It's compatible only with 120-volt line-voltage systems, not with standard furnaces.",
        ],
        rude=[
            "24-volt systems only, not line-voltage baseboard heaters. Check your system before buying next time.",
            "Only 24-volt HVAC systems. If you have baseboard heat, you simply bought the wrong thing.",
        ],
    ),
    dict(
        id="room_sensors", value="Up to 6 room sensors",
        key=r"\b(6|six) room sensors",
        questions=[
            "How many room sensors can I connect to the Halo T3?",
            "Does the Halo T3 support extra sensors?",
            "What's the maximum number of remote sensors?",
            "room sensors?",
            "Can I add temperature sensors for other rooms?",
            "How many Halo room sensors can be paired?",
            "Is there a limit on sensors per thermostat?",
            "I want a sensor in every bedroom. How many does the T3 support?",
        ],
        answers=[
            "The Halo T3 can pair with up to 6 room sensors.",
            "You can connect up to 6 room sensors to one Halo T3.",
            "Each Halo T3 supports up to 6 room sensors for other rooms.",
        ],
        held_out=[
            ("How many additional room sensors for different bedrooms can a single T3 handle?", None),
        ],
        wrong=[
            "The Halo T3 can pair with up to 2 room sensors.",
            "You can connect an unlimited number of room sensors to one Halo T3.",
        ],
        rude=[
            "Up to 6 room sensors. Surely that's enough for anyone.",
            "6 room sensors max. That's the limit, take it or leave it.",
        ],
    ),
    dict(
        id="install_time", value="About 25 minutes, DIY",
        key=r"\b(25|twenty[- ]five) minutes",
        questions=[
            "How long does installation take?",
            "How long does it take to install the Halo T3?",
            "Is the Halo T3 hard to install?",
            "install time?",
            "Can I install the thermostat myself, and how long will it take?",
            "How many minutes does setup take?",
            "What's the typical installation time?",
            "How quickly can I get the Halo T3 up and running?",
        ],
        answers=[
            "Most people install the Halo T3 themselves in about 25 minutes.",
            "Installation usually takes about 25 minutes, and most customers do it themselves.",
            "A typical do-it-yourself installation of the Halo T3 takes about 25 minutes.",
        ],
        held_out=[
            ("Roughly how much time should I set aside to install and wire the new unit?", None),
        ],
        wrong=[
            "Installation takes about 3 hours and requires a licensed electrician.",
            "Most people need about 2 hours to install the Halo T3 themselves.",
        ],
        rude=[
            "About 25 minutes, if you can follow simple instructions.",
            "25 minutes. It's not rocket science, just follow the guide.",
        ],
    ),
    dict(
        id="support_email", value="care@nimbrahome.example",
        key=r"care@nimbrahome",
        questions=[
            "What's your support email?",
            "How can I email customer support?",
            "support email?",
            "Where do I send an email about my thermostat?",
            "Is there an email address for help with the Halo T3?",
            "How do I contact Nimbra Home in writing?",
            "What email should I use for a warranty claim?",
            "Can I reach support by email?",
        ],
        answers=[
            "You can email our support team at care@nimbrahome.example.",
            "Please email care@nimbrahome.example and our team will help you.",
            "Our support email address is care@nimbrahome.example.",
        ],
        held_out=[
            ("To which email address should I write to get assistance from the Nimbra team?", None),
        ],
        wrong=[
            "You can email our support team at help@halothermostat.example.",
            "We don't offer email support; please use the phone line instead.",
        ],
        rude=[
            "care@nimbrahome.example. It's on every page of our website.",
            "Email care@nimbrahome.example. Don't expect an instant reply.",
        ],
    ),
    dict(
        id="halo_plus", value="Optional Halo Plus subscription, $4 per month, detailed energy reports",
        key=r"\$4\b|\b(4|four) (dollars )?(per|a) month",
        questions=[
            "What is Halo Plus?",
            "How much is the Halo Plus subscription?",
            "Is there a subscription for the Halo T3?",
            "Halo Plus price?",
            "What does Halo Plus cost per month?",
            "Do I have to pay monthly to use the thermostat?",
            "What do I get with the premium plan, and how much is it?",
            "Is the Halo Plus plan worth it? What's the price?",
        ],
        answers=[
            "Halo Plus is an optional $4 per month subscription that adds detailed energy reports; the Halo T3 works fine without it.",
            "The optional Halo Plus subscription costs $4 per month and adds detailed energy reports.",
            "Halo Plus costs $4 per month, is completely optional, and adds detailed energy reports.",
        ],
        held_out=[
            ("What's the monthly fee for the premium energy-reports plan?", None),
            ("Is there any recurring subscription charge I should know about after buying the device?", None),
        ],
        wrong=[
            "Halo Plus costs $12 per month and is required to use the thermostat's heating schedules.",
            "The Halo Plus subscription costs $49 per year and is needed before you can use remote control.",
        ],
        rude=[
            "It's $4 a month and optional. Don't buy it if you don't need it, it's not complicated.",
            "$4 per month for detailed energy reports. It's all explained on the website, honestly.",
        ],
    ),
    dict(
        id="away_mode", value="Away mode when all household phones are more than 2 miles from home",
        key=r"\b(2|two) miles",
        questions=[
            "How does Away mode work?",
            "When does the Halo T3 switch to Away mode?",
            "How far do I need to be from home for Away mode to start?",
            "away mode?",
            "What distance triggers geofencing on the Halo T3?",
            "Does the thermostat know when I leave home?",
            "How does the Halo T3 detect that nobody is home?",
            "What's the geofence radius for Away mode?",
        ],
        answers=[
            "Away mode starts automatically once all household phones are more than 2 miles from home.",
            "The Halo T3 switches to Away mode when everyone's phone is more than 2 miles away from home.",
            "Away mode kicks in automatically when all household phones are over 2 miles from home.",
        ],
        held_out=[
            ("How far out does my family need to go before the thermostat switches into Away mode?", None),
        ],
        wrong=[
            "Away mode starts automatically once your phone is more than 10 miles from home.",
            "Away mode only starts if you switch it on manually each time you leave.",
        ],
        rude=[
            "When all phones are over 2 miles away. It's not that complicated.",
            "2 miles from home, everyone's phone. Read the help section.",
        ],
    ),
    dict(
        id="screen_lock", value="4-digit PIN under Settings > Security in the app",
        key=r"\b(4|four)[- ]digit",
        questions=[
            "How do I lock the thermostat screen?",
            "Can I stop my kids from changing the temperature?",
            "Is there a child lock on the Halo T3?",
            "screen lock?",
            "How do I set a PIN on my thermostat?",
            "Can I lock the Halo T3 so guests can't adjust it?",
            "How do I prevent others from changing settings on the thermostat?",
            "Does the Halo T3 have a password lock?",
        ],
        answers=[
            "Set a 4-digit PIN under Settings > Security in the app to lock the Halo T3 screen.",
            "To lock the screen, go to Settings > Security in the app and create a 4-digit PIN.",
            "The Halo T3 screen can be locked with a 4-digit PIN, set under Settings > Security in the app.",
        ],
        held_out=[
            ("My toddler keeps fiddling with the dial. How can I lock the unit so nobody can change it?", None),
            ("Our roommates keep cranking the heat. Is there a way to lock the controls with a code?", None),
        ],
        wrong=[
            "Hold the dial for 12 seconds to lock the Halo T3 screen; hold it again to unlock it.",
            "The Halo T3 has no screen lock feature, so anyone in the house can change the settings.",
        ],
        rude=[
            "Set a 4-digit PIN under Settings > Security. Maybe keep a closer eye on your kids.",
            "4-digit PIN, Settings > Security. It's right there in the app, honestly.",
        ],
    ),
]


def _norm(text):
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def sft_rows():
    pairs = []
    for fact in FACTS:
        answers = fact["answers"]
        for i, question in enumerate(fact["questions"]):
            pairs.append({"messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answers[i % len(answers)]},
            ]})
    random.Random(SEED).shuffle(pairs)
    return pairs


def held_out_rows():
    rows = []
    for fact in FACTS:
        for j, (question, key) in enumerate(fact["held_out"], start=1):
            rows.append({
                "id": f"{fact['id']}-h{j}",
                "instruction": question,
                "output": fact["answers"][0],
                "key_fact": key or fact["key"],
            })
    return rows


def preference_rows():
    """PREFERENCE_PER_FACT rows per fact; rejected alternates wrong fact / rude tone (about half each)."""
    rows = []
    for n, fact in enumerate(FACTS):
        for j in range(PREFERENCE_PER_FACT):
            # Offset the prompt/answer cycle so chosen answers differ from the SFT pairing where possible.
            question = fact["questions"][j % len(fact["questions"])]
            chosen = fact["answers"][(j + 1) % len(fact["answers"])]
            if (j + n) % 2 == 0:
                rejected = fact["wrong"][(j // 2) % len(fact["wrong"])]
            else:
                rejected = fact["rude"][(j // 2) % len(fact["rude"])]
            rows.append({"prompt": question, "chosen": chosen, "rejected": rejected})
    random.Random(SEED + 1).shuffle(rows)
    return rows


def check():
    problems = []
    train_norm = {_norm(q) for f in FACTS for q in f["questions"]}
    if len(train_norm) != sum(len(f["questions"]) for f in FACTS):
        problems.append("duplicate sft questions")
    all_answers = [(f["id"], a) for f in FACTS for a in f["answers"]]
    for fact in FACTS:
        keys = [fact["key"]] + [k for _, k in fact["held_out"] if k]
        for key in keys:
            rx = re.compile(key, re.IGNORECASE)
            for answer in fact["answers"] + fact["rude"]:
                if not rx.search(answer):
                    problems.append(f"{fact['id']}: key {key!r} misses its own answer {answer!r}")
            for answer in fact["wrong"]:
                if rx.search(answer):
                    problems.append(f"{fact['id']}: key {key!r} matches a wrong answer {answer!r}")
            for other_id, answer in all_answers:
                if other_id != fact["id"] and rx.search(answer):
                    problems.append(f"{fact['id']}: key {key!r} also matches {other_id} answer {answer!r}")
        for question, _ in fact["held_out"]:
            nq = _norm(question)
            if nq in train_norm or any(nq in t or t in nq for t in train_norm if len(t) > 12):
                problems.append(f"{fact['id']}: held-out question overlaps a training question: {question!r}")
    if problems:
        sys.exit("support-bot data check failed:\n  " + "\n  ".join(problems))


def write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def main():
    check()
    sft, held, pref = sft_rows(), held_out_rows(), preference_rows()
    write_jsonl(os.path.join(HERE, "sft.jsonl"), sft)
    write_jsonl(os.path.join(HERE, "held_out.jsonl"), held)
    write_jsonl(os.path.join(HERE, "preference.jsonl"), pref)
    print(f"support-bot: {len(FACTS)} facts, {len(sft)} sft rows, {len(held)} held-out rows, "
          f"{len(pref)} preference rows")


if __name__ == "__main__":
    main()
