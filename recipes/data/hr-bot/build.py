#!/usr/bin/env python3
"""Build the hr-bot example dataset for tunebook.

Every question and answer below is hand-written. The script only pairs them up, checks them, and writes:

  train.jsonl     alpaca rows {"instruction", "output"}
  held_out.jsonl  alpaca rows plus "id" and "key_fact" (case-insensitive regex)
  facts.md        a table of the facts, for humans

The company (Brightwave Logistics) and all of its policies are fictional, so no base model can know them.
The output is deterministic: rerunning the script rewrites byte-identical files.

Usage: python3 recipes/data/hr-bot/build.py
"""
import json
import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
COMPANY = "Brightwave Logistics"
SEED = 20240611

# Each fact: id, topic, value (for facts.md), key (regex every answer about it must match),
# questions (training paraphrases), answers (cycled over the questions; all restate the fact),
# held_out: list of (question, key regex or None to use the fact's key). Held-out questions are worded
# differently from every training question.
FACTS = [
    dict(
        id="annual_leave", topic="Annual leave", value="27 paid days per year (full-time)",
        key=r"\b(27|twenty[- ]seven)\b",
        questions=[
            "How many vacation days do I get per year?",
            "What is the annual leave allowance at Brightwave Logistics?",
            "I'm new here and wondering how much paid time off I get each year.",
            "How many days of PTO does the company give full-time staff?",
            "what's our yearly vacation allowance",
            "Could you tell me how many days of annual leave employees receive?",
            "How many paid days off can I take in a year for vacations?",
            "Just joined the team. How much annual leave am I entitled to?",
            "What's the number of vacation days per year here?",
            "annual leave entitlement?",
        ],
        answers=[
            "Full-time employees at Brightwave Logistics get 27 days of paid annual leave per year.",
            "You are entitled to 27 days of paid annual leave each year as a full-time employee.",
            "Brightwave Logistics gives full-time staff 27 paid vacation days per year.",
        ],
        held_out=[
            ("As a full-timer, what amount of vacation time comes with the job annually?", None),
            ("Remind me how big my yearly vacation balance is for trips and rest.", None),
        ],
    ),
    dict(
        id="carry_over", topic="Leave carry-over", value="Up to 8 unused days; must be used by March 31",
        key=r"\b(8|eight)\b",
        questions=[
            "Can I carry over unused vacation days to next year?",
            "How many leave days can roll over into the next year?",
            "What happens to my annual leave if I don't use it all?",
            "Is there a limit on carrying forward vacation days?",
            "I still have lots of leave left. Can I take it into January?",
            "What's the carry-over rule for unused annual leave?",
            "Do unused vacation days expire at year end?",
            "How many untaken days am I allowed to bring into the new year?",
            "Can leftover PTO be rolled forward, and is there a cap?",
            "What is the maximum number of annual leave days I can transfer to next year?",
        ],
        answers=[
            "You can carry over up to 8 unused annual leave days into the next year, and they must be used by March 31.",
            "Up to 8 unused vacation days roll over to the next year; carried-over days expire if not used by March 31.",
            "Brightwave Logistics lets you carry forward a maximum of 8 leave days, which must be taken by March 31.",
        ],
        held_out=[
            ("At the end of December, how much of my leftover leave survives into the following year?", None),
            ("By what date do rolled-over vacation days need to be used up?", r"march 31|31(st)? (of )?march"),
        ],
    ),
    dict(
        id="sick_days", topic="Sick leave", value="12 paid sick days per year",
        key=r"\b(12|twelve)\b",
        questions=[
            "How many sick days do I get?",
            "What is the paid sick leave allowance?",
            "How many days can I be off sick with pay each year?",
            "I'm feeling unwell. How much sick leave do employees have per year?",
            "What's the annual sick day entitlement at Brightwave?",
            "how many paid sick days per year",
            "Could you explain how much paid sickness leave staff receive?",
            "If I get ill, how many days of sick pay am I entitled to annually?",
            "What's the yearly limit on paid sick days?",
            "How much sick time does the company provide each year?",
        ],
        answers=[
            "Employees at Brightwave Logistics get 12 paid sick days per year.",
            "Brightwave Logistics provides 12 days of paid sick leave each year.",
            "You are entitled to 12 paid sick days every year.",
        ],
        held_out=[
            ("If I come down with the flu, how many fully paid days off for illness do I have in a year?", None),
            ("What's my yearly quota of paid sick absence when I'm not well enough to work?", None),
        ],
    ),
    dict(
        id="notice_period", topic="Notice period", value="4 weeks for staff, 10 weeks for managers",
        key=r"\b(4|four) weeks.{0,60}\b(10|ten) weeks",
        questions=[
            "What is the notice period if I resign?",
            "How much notice do I need to give when quitting?",
            "I'm thinking of leaving. How many weeks' notice is required?",
            "What notice period applies to managers?",
            "How long is the resignation notice for regular staff?",
            "Do managers have a longer notice period than other employees?",
            "How many weeks of notice must I give before my last day?",
            "What's the required notice when handing in my resignation?",
            "If a team lead resigns, how much notice is expected?",
            "notice period for staff vs managers?",
        ],
        answers=[
            "The notice period is 4 weeks for staff and 10 weeks for managers.",
            "Staff must give 4 weeks' notice when resigning, while managers must give 10 weeks.",
            "Brightwave Logistics requires 4 weeks of notice from staff and 10 weeks from managers.",
        ],
        held_out=[
            ("As an individual contributor resigning, how far ahead must I tell the company?",
             r"\b(4|four) weeks"),
            ("I run a team and plan to step down from the company; what notice is required of me?",
             r"\b(10|ten) weeks"),
        ],
    ),
    dict(
        id="probation", topic="Probation", value="5 months",
        key=r"\b(5|five) months",
        questions=[
            "How long is the probation period?",
            "What's the length of probation for new hires?",
            "I just started. How many months am I on probation?",
            "When does my probationary period end?",
            "How long do new employees stay on probation?",
            "Is there a trial period when you join, and how long is it?",
            "probation length?",
            "Could you tell me the duration of the probationary period at Brightwave?",
            "How many months does the new-starter probation last?",
            "Am I on probation during my first months, and for how long?",
        ],
        answers=[
            "New employees at Brightwave Logistics have a probation period of 5 months.",
            "The probation period for new hires lasts 5 months from your start date.",
            "Probation at Brightwave Logistics is 5 months long.",
        ],
        held_out=[
            ("Roughly how many months does the initial trial stage for newcomers run?", None),
        ],
    ),
    dict(
        id="parental_leave", topic="Parental leave", value="22 weeks fully paid, all new parents incl. adoptive",
        key=r"\b(22|twenty[- ]two) weeks",
        questions=[
            "How much parental leave do we get?",
            "How many weeks of paid parental leave does Brightwave offer?",
            "My partner is expecting a baby. How much leave can I take?",
            "What's the maternity leave policy?",
            "Do fathers get paternity leave, and for how long?",
            "How long is paid leave after having a baby?",
            "What is the parental leave entitlement for new parents?",
            "Is adoption covered by parental leave, and how many weeks is it?",
            "We're having a child soon; how many weeks off are paid?",
            "parental leave length?",
        ],
        answers=[
            "All new parents, including adoptive parents, get 22 weeks of fully paid parental leave.",
            "Brightwave Logistics offers 22 weeks of fully paid parental leave to every new parent.",
            "New parents receive 22 weeks of fully paid parental leave, regardless of gender.",
        ],
        held_out=[
            ("How many paid weeks can I take off when my newborn arrives?", None),
            ("Expecting twins in the spring. What paid time away do mothers and fathers receive?", None),
        ],
    ),
    dict(
        id="remote_work", topic="Remote work", value="Up to 3 days per week from home",
        key=r"\b(3|three)\b[^.]{0,20}\bdays?\b",
        questions=[
            "How many days a week can I work from home?",
            "What's the remote work policy?",
            "Can I work remotely, and how often?",
            "How many remote days per week are allowed?",
            "Is hybrid working allowed at Brightwave Logistics?",
            "I live far from the office. How many days can I work from home each week?",
            "wfh days per week?",
            "Could I work from home full time?",
            "What's the limit on home-working days in a week?",
            "How often am I required to be in the office?",
        ],
        answers=[
            "You can work from home up to 3 days per week; the other days are spent in the office.",
            "Brightwave Logistics allows up to 3 remote work days per week, with the rest in the office.",
            "Employees may work remotely up to 3 days each week and spend the other days in the office.",
        ],
        held_out=[
            ("Under the hybrid arrangement, what's the max number of weekdays I can spend working at my house?",
             None),
        ],
    ),
    dict(
        id="home_office", topic="Home-office stipend", value="$650, one-time",
        key=r"\b650\b",
        questions=[
            "Is there a home office stipend?",
            "How much money do I get to set up my home office?",
            "What's the allowance for home office equipment?",
            "Can I expense a desk and chair for working from home?",
            "I need a monitor for home. Is there a budget for that?",
            "How big is the work-from-home setup stipend?",
            "Does Brightwave pay for home office furniture?",
            "what's the home office budget",
            "Is there a one-time payment for equipping my remote workspace?",
            "How much can I claim for my home workstation?",
        ],
        answers=[
            "Brightwave Logistics gives a one-time home office stipend of $650 for equipment like a desk, chair or monitor.",
            "You can claim a one-time $650 home office stipend to set up your workspace.",
            "Every employee gets a one-time $650 stipend for home office equipment.",
        ],
        held_out=[
            ("What sum is available to me for buying home office gear for my apartment?", None),
            ("Will the firm fund a standing desk for my spare room, and up to what amount?", None),
        ],
    ),
    dict(
        id="meal_limit", topic="Meal reimbursement", value="$45 per day on business travel",
        key=r"\b45\b",
        questions=[
            "What is the meal reimbursement limit when travelling?",
            "How much can I spend on food during business trips?",
            "What's the daily meal allowance on business travel?",
            "Is there a cap on meal expenses per day?",
            "I'm going on a work trip. How much will the company cover for meals?",
            "How much per day can I expense for food while travelling?",
            "meal per diem?",
            "What's the food budget per day when I'm on company travel?",
            "How much does Brightwave reimburse for meals on the road?",
            "Is there a daily limit on what I can spend eating out on a business trip?",
        ],
        answers=[
            "Meals on business travel are reimbursed up to $45 per day.",
            "The meal reimbursement limit for business travel is $45 per day.",
            "You can expense up to $45 per day for meals while travelling for work.",
        ],
        held_out=[
            ("When I'm away for a client visit, what's the most I can claim for breakfast, lunch and dinner combined each day?",
             None),
        ],
    ),
    dict(
        id="mileage", topic="Mileage rate", value="61 cents per mile (own car)",
        key=r"61 cents|\$0?\.61\b",
        questions=[
            "What's the mileage reimbursement rate?",
            "How much do I get per mile when I use my own car for work?",
            "I drive to client sites in my personal car. How is that reimbursed?",
            "What rate does Brightwave pay for business miles?",
            "How much can I claim for driving my own vehicle on company business?",
            "mileage rate?",
            "What is the per-mile allowance for using a private car?",
            "Do you reimburse mileage, and at what rate?",
            "How is car travel reimbursed when I use my own vehicle?",
            "I used my car for a delivery run. What per-mile amount can I claim?",
        ],
        answers=[
            "Business driving in your own car is reimbursed at 61 cents per mile.",
            "The mileage reimbursement rate is 61 cents per mile.",
            "Brightwave Logistics pays 61 cents per mile for business travel in a personal vehicle.",
        ],
        held_out=[
            ("If I take my own automobile to a customer meeting, how much will I be paid back for each mile?", None),
        ],
    ),
    dict(
        id="travel_class", topic="Flight class", value="Economy; premium economy only for flights over 9 hours",
        key=r"economy",
        questions=[
            "What class can I fly on business trips?",
            "Can I book business class for work travel?",
            "What's the flight class policy?",
            "Am I allowed premium economy on long flights?",
            "I have a long-haul flight to Sydney for work. What seat class can I book?",
            "Which cabin class does the travel policy allow?",
            "Do we fly economy on company trips?",
            "What are the rules for booking flights for work?",
            "flight class rules?",
            "When is premium economy allowed?",
        ],
        answers=[
            "Book economy for business flights; premium economy is allowed only for flights over 9 hours.",
            "The travel policy is economy class, with premium economy permitted for flights longer than 9 hours.",
            "Flights are booked in economy, except flights over 9 hours, which may be booked in premium economy.",
        ],
        held_out=[
            ("For an intercontinental work trip, may I upgrade to a nicer cabin?", r"premium economy"),
            ("Is first class ever permitted when flying on company business?", r"\b(9|nine) hours"),
        ],
    ),
    dict(
        id="hotel_cap", topic="Hotel limit", value="$210 per night",
        key=r"\b210\b",
        questions=[
            "What's the hotel limit per night?",
            "How much can I spend on a hotel room on a business trip?",
            "Is there a nightly cap on accommodation costs?",
            "What's the maximum hotel rate I can book?",
            "I'm booking a hotel for a conference. What's the budget?",
            "hotel budget per night?",
            "How much does Brightwave reimburse for lodging per night?",
            "What accommodation allowance applies when travelling for work?",
            "What's the most I can pay for a hotel room per night?",
            "How expensive a hotel can I book when I travel for Brightwave?",
        ],
        answers=[
            "Hotel stays on business travel are capped at $210 per night.",
            "You can book hotels up to $210 per night for business trips.",
            "The accommodation limit for business travel is $210 per night.",
        ],
        held_out=[
            ("When I stay over in another city for work, what's the ceiling on my room cost for each night?", None),
        ],
    ),
    dict(
        id="company_holidays", topic="Company holidays", value="11 paid company holidays per year",
        key=r"\b(11|eleven)\b",
        questions=[
            "How many public holidays does Brightwave observe?",
            "How many paid company holidays are there each year?",
            "What's the number of official holidays when the office is closed?",
            "Do we get bank holidays off, and how many?",
            "How many days per year is the company closed for holidays?",
            "company holidays count?",
            "Besides my vacation days, how many paid holidays do I get?",
            "How many paid public holidays are on the company calendar?",
            "What is the annual number of company-wide holidays?",
            "How many holidays a year does the company give us where the office shuts?",
        ],
        answers=[
            "Brightwave Logistics observes 11 paid company holidays each year.",
            "There are 11 paid company holidays per year, on top of your annual leave.",
            "Employees get 11 paid company holidays every year.",
        ],
        held_out=[
            ("On how many days a year is everyone off because of official holidays?", None),
        ],
    ),
    dict(
        id="founders_day", topic="Founders' Day", value="June 14, all offices closed",
        key=r"june 14|14(th)? (of )?june",
        questions=[
            "When is Founders' Day?",
            "What date is the Brightwave Founders' Day holiday?",
            "Is the office closed on Founders' Day, and when is it?",
            "Which day in June is a company holiday?",
            "What's the date of our company's founding anniversary holiday?",
            "founders day date?",
            "I heard we get a day off for the company's birthday. When is that?",
            "On what date does Brightwave celebrate Founders' Day?",
            "When does the company close for Founders' Day each year?",
            "Do we get Founders' Day off?",
        ],
        answers=[
            "Founders' Day is on June 14, and all Brightwave Logistics offices are closed that day.",
            "Brightwave Logistics celebrates Founders' Day on June 14 as a paid company holiday.",
            "The company closes on June 14 every year for Founders' Day.",
        ],
        held_out=[
            ("What day do we get off to celebrate the company's founding?", None),
        ],
    ),
    dict(
        id="winter_shutdown", topic="Winter shutdown", value="December 24 to January 1, paid, no leave used",
        key=r"december 24|24(th)? (of )?december|dec\.? 24",
        questions=[
            "When is the winter shutdown?",
            "Is the office closed over Christmas and New Year?",
            "What are the dates of the end-of-year closure?",
            "Do I need to use vacation days for the holiday shutdown in December?",
            "When does the company close for the winter break?",
            "winter shutdown dates?",
            "Are we working between Christmas and New Year's?",
            "How long is the office closed at the end of the year?",
            "Which days in December and January is Brightwave closed?",
            "Is the office open on December 27?",
        ],
        answers=[
            "Brightwave Logistics closes from December 24 to January 1 for the winter shutdown, and it does not use your annual leave.",
            "The winter shutdown runs from December 24 to January 1, and those days are paid without using vacation days.",
            "Offices are closed from December 24 through January 1; the winter shutdown is paid and separate from annual leave.",
        ],
        held_out=[
            ("Over the festive season, from what date does the company go dark until the new year?", None),
        ],
    ),
    dict(
        id="payday", topic="Payday", value="Monthly, on the 25th",
        key=r"\b25(th)?\b",
        questions=[
            "When is payday?",
            "What day of the month do we get paid?",
            "When will my salary hit my bank account?",
            "How often are we paid, and on which date?",
            "I'm new. On what date each month does my pay arrive?",
            "payday?",
            "On which day is salary paid at Brightwave Logistics?",
            "What date are wages paid each month?",
            "When does the monthly pay go out?",
            "What's the payroll date?",
        ],
        answers=[
            "Salaries at Brightwave Logistics are paid monthly on the 25th of each month.",
            "Payday is the 25th of every month.",
            "Brightwave Logistics pays salaries monthly, on the 25th.",
        ],
        held_out=[
            ("Which calendar day should I expect my earnings to be deposited?", None),
            ("I need to schedule my rent transfer. When exactly does the company send out our monthly money?", None),
        ],
    ),
    dict(
        id="retirement_match", topic="401(k) match", value="Dollar for dollar up to 6% of salary",
        key=r"\b(6|six) ?(%|percent)",
        questions=[
            "What is the 401(k) match?",
            "Does Brightwave match pension contributions?",
            "How much does the company contribute to my retirement plan?",
            "What percentage of salary does the employer match for retirement?",
            "I'm setting up my 401k. What's the company match?",
            "retirement match percent?",
            "Is there an employer match on retirement savings, and how much?",
            "How much will Brightwave add to my pension?",
            "What's the maximum employer contribution to my retirement account?",
            "Does the company put money into my 401(k)?",
        ],
        answers=[
            "Brightwave Logistics matches your 401(k) contributions dollar for dollar up to 6% of your salary.",
            "The company matches retirement contributions 100% up to 6% of salary.",
            "You get a dollar-for-dollar employer match on your 401(k), up to 6% of your salary.",
        ],
        held_out=[
            ("If I put part of each paycheck into my retirement account, how much does my employer chip in?", None),
        ],
    ),
    dict(
        id="wellness", topic="Wellness allowance", value="$480 per year",
        key=r"\b480\b",
        questions=[
            "Is there a wellness allowance?",
            "How much is the annual wellness budget?",
            "Can I get reimbursed for a gym membership?",
            "Does Brightwave pay for yoga classes or fitness apps?",
            "What's the yearly health and fitness allowance?",
            "wellness stipend amount?",
            "How much can I claim each year for wellbeing expenses?",
            "I want to join a gym. Will the company cover some of it?",
            "What does the wellness benefit cover and how much is it?",
            "Is there a budget for fitness or mental wellbeing?",
        ],
        answers=[
            "Each employee gets a wellness allowance of $480 per year for things like gym memberships, fitness classes or meditation apps.",
            "The annual wellness allowance is $480, usable for gym, fitness and wellbeing expenses.",
            "You can claim up to $480 per year from your wellness allowance.",
        ],
        held_out=[
            ("How much per year can I get back for fitness club fees or a workout app?", None),
        ],
    ),
    dict(
        id="training_budget", topic="Training budget", value="$1,800 per year",
        key=r"\b1,?800\b",
        questions=[
            "What's the training budget per employee?",
            "How much can I spend on courses and conferences?",
            "Is there a learning and development budget?",
            "Will the company pay for a certification?",
            "How much does Brightwave give for professional development each year?",
            "training budget?",
            "I'd like to attend a conference. What's my annual learning budget?",
            "What's the yearly allowance for books, courses and training?",
            "How much money is set aside for my education and upskilling?",
            "Can I get funding for an online course, and how much?",
        ],
        answers=[
            "Every employee has an annual training budget of $1,800 for courses, conferences and certifications.",
            "Brightwave Logistics provides $1,800 per year for each employee's learning and development.",
            "Your professional development budget is $1,800 per year.",
        ],
        held_out=[
            ("What's my yearly pot for improving my skills through classes or workshops?", None),
            ("Is a paid bootcamp to learn data analysis something the company sponsors, and how much is available?",
             None),
        ],
    ),
    dict(
        id="bereavement", topic="Bereavement leave", value="7 paid days",
        key=r"\b(7|seven) (paid )?days",
        questions=[
            "How much bereavement leave do we get?",
            "A family member passed away. How many days off can I take?",
            "What is the compassionate leave policy?",
            "How many days of paid leave are given after a death in the family?",
            "bereavement days?",
            "How long is funeral leave at Brightwave?",
            "My grandmother died; what leave am I entitled to?",
            "What's the paid leave for losing a close relative?",
            "Is bereavement leave paid, and how many days is it?",
            "How many bereavement days are offered if a parent dies?",
        ],
        answers=[
            "Employees get 7 paid days of bereavement leave for the death of a family member.",
            "Bereavement leave is 7 paid days after the loss of a family member.",
            "You are entitled to 7 days of paid bereavement leave when a family member dies.",
        ],
        held_out=[
            ("My uncle just passed. How much paid time can I take to grieve and attend the service?", None),
        ],
    ),
    dict(
        id="jury_duty", topic="Jury duty", value="Full pay for up to 15 working days",
        key=r"\b(15|fifteen)\b",
        questions=[
            "Do I get paid during jury duty?",
            "What's the jury duty policy?",
            "I've been summoned for jury service. Will I still get my salary?",
            "How many days of jury duty does Brightwave pay for?",
            "Is jury service paid leave?",
            "jury duty pay?",
            "What happens to my pay if I'm called as a juror?",
            "How long does the company cover full pay for jury service?",
            "Do I need to use vacation days for jury duty?",
            "Will I lose pay if I serve on a jury?",
        ],
        answers=[
            "Brightwave Logistics pays your full salary for up to 15 working days of jury duty.",
            "Jury duty is paid leave: you get full pay for up to 15 working days.",
            "You receive full pay for up to 15 working days of jury service, without using annual leave.",
        ],
        held_out=[
            ("A court letter says I must serve on a jury next month. For how long will my wages continue?", None),
        ],
    ),
    dict(
        id="expense_deadline", topic="Expense deadline", value="Within 30 days of purchase",
        key=r"\b(30|thirty) days",
        questions=[
            "What's the deadline for submitting expenses?",
            "How long do I have to file an expense claim?",
            "When must expense reports be submitted?",
            "I forgot to submit a receipt from last month. Is it too late?",
            "How soon after a purchase do I need to claim it?",
            "expense deadline?",
            "Is there a time limit for expense reimbursement claims?",
            "Within how many days should receipts be submitted?",
            "How many days do I have to turn in my travel expenses?",
        ],
        answers=[
            "Expense claims must be submitted within 30 days of the purchase date.",
            "You have 30 days from the date of purchase to submit an expense claim.",
            "Submit expenses within 30 days of purchase; late claims may not be reimbursed.",
        ],
        held_out=[
            ("After I pay for something on a work trip, what's the window to get the expense request in?",
             None),
        ],
    ),
    dict(
        id="referral_bonus", topic="Referral bonus", value="$2,500 after the hire passes probation",
        key=r"\b2,?500\b",
        questions=[
            "Is there a referral bonus?",
            "How much do I get for referring a friend who gets hired?",
            "What's the employee referral reward?",
            "If I recommend someone and they join, do I get paid?",
            "referral bonus amount?",
            "How does the referral program work at Brightwave?",
            "What's the bonus for a successful hire referral?",
            "I know a great candidate. Is there a reward for referring them?",
            "How much is paid out for employee referrals?",
        ],
        answers=[
            "You earn a $2,500 referral bonus when someone you refer is hired and passes probation.",
            "The employee referral bonus is $2,500, paid once your referral completes probation.",
            "Brightwave Logistics pays a $2,500 bonus for each successful referral after the new hire passes probation.",
        ],
        held_out=[
            ("My cousin just got an offer here after my referral. What reward will I receive?", None),
        ],
    ),
    dict(
        id="laptop_refresh", topic="Laptop refresh", value="Every 3 years",
        key=r"\b(3|three)[- ]years?\b",
        questions=[
            "How often do we get a new laptop?",
            "What's the laptop refresh cycle?",
            "My laptop is old. When am I due for a replacement?",
            "How many years until my work computer is replaced?",
            "laptop refresh?",
            "When does Brightwave upgrade employee laptops?",
            "How long do we keep a company laptop before it's swapped?",
            "Is there a schedule for replacing work computers?",
            "How frequently is company hardware refreshed?",
        ],
        answers=[
            "Company laptops at Brightwave Logistics are replaced every 3 years.",
            "Brightwave Logistics refreshes employee laptops every 3 years.",
            "The laptop refresh cycle is 3 years, so you get a new laptop every 3 years.",
        ],
        held_out=[
            ("After it's issued, how long before my work laptop gets exchanged for a newer model?", None),
        ],
    ),
    dict(
        id="core_hours", topic="Core hours", value="10 a.m. to 3 p.m.; flexible otherwise",
        key=r"10 ?a\.?m\.?.{0,20}3 ?p\.?m",
        questions=[
            "What are the core hours?",
            "When do I need to be available during the day?",
            "Is there flexible working time, and what are the required hours?",
            "What hours must everyone be online?",
            "core hours?",
            "I'd like to start early and leave early. Which hours are mandatory?",
            "Between what times are meetings expected to happen?",
            "What's the core working window at Brightwave?",
            "Which part of the day do I have to be working?",
        ],
        answers=[
            "Core hours are 10 a.m. to 3 p.m.; outside that window you can set your own schedule.",
            "Everyone must be available during core hours, 10 a.m. to 3 p.m.",
            "Brightwave Logistics has flexible hours with core hours from 10 a.m. to 3 p.m.",
        ],
        held_out=[
            ("With flextime, during which stretch of the day must I be reachable?", None),
            ("If I'm a night owl, can I log on at noon, or when is my presence required?", None),
        ],
    ),
    dict(
        id="overtime", topic="Overtime rate", value="1.5x regular hourly rate (time and a half)",
        key=r"\b1\.5\b|time and a half|one and a half",
        questions=[
            "What's the overtime rate?",
            "How is overtime paid?",
            "Do hourly staff get paid extra for overtime?",
            "What's the pay rate for hours beyond 40 a week?",
            "overtime pay?",
            "If I work extra hours in the warehouse, how much do I earn?",
            "Is overtime paid at time and a half?",
            "How much more do I get per hour for overtime?",
            "What multiplier applies to overtime pay?",
        ],
        answers=[
            "Overtime is paid at 1.5 times your regular hourly rate.",
            "Hourly employees earn 1.5 times their base rate for overtime hours.",
            "Overtime pay is 1.5 times the normal hourly rate, also called time and a half.",
        ],
        held_out=[
            ("When my shift runs past my normal hours, how much extra per hour is overtime worth?", None),
        ],
    ),
    dict(
        id="hr_email", topic="HR contact", value="askhr@brightwave.example",
        key=r"askhr@brightwave",
        questions=[
            "What's the HR email address?",
            "How do I contact HR?",
            "Who do I email with HR questions?",
            "I have a question about my payslip. How can I reach HR?",
            "hr email?",
            "What's the best way to get in touch with the people team?",
            "Where should I send HR-related questions?",
            "Is there an email for the HR department?",
            "How can I reach human resources in writing?",
        ],
        answers=[
            "You can contact HR by email at askhr@brightwave.example.",
            "Email HR at askhr@brightwave.example for any HR question.",
            "The HR team's email address is askhr@brightwave.example.",
        ],
        held_out=[
            ("To which mailbox should I write if I need something from human resources?", None),
            ("Where do I write to HR electronically?", None),
        ],
    ),
    dict(
        id="whistleblower", topic="Whistleblower hotline", value="1-800-555-0199, anonymous, 24/7",
        key=r"555[- ]?0199",
        questions=[
            "What's the whistleblower hotline number?",
            "How can I report misconduct anonymously?",
            "I saw something unethical. How do I report it confidentially?",
            "Is there an ethics hotline?",
            "whistleblower hotline?",
            "Who can I call to report fraud without giving my name?",
            "What number do I use to raise a compliance concern?",
            "How do I report a safety violation anonymously?",
            "Is there a confidential line for reporting wrongdoing?",
        ],
        answers=[
            "Call the anonymous whistleblower hotline at 1-800-555-0199, available 24/7.",
            "You can report concerns anonymously through the whistleblower hotline, 1-800-555-0199, open 24 hours a day.",
            "The confidential whistleblower hotline is 1-800-555-0199 and is open 24/7.",
        ],
        held_out=[
            ("If I suspect a colleague of bribery, what phone line lets me flag it without revealing who I am?", None),
        ],
    ),
    dict(
        id="dress_code", topic="Dress code", value="Smart casual; steel-toe boots in the warehouse",
        key=r"smart[- ]casual",
        questions=[
            "What is the dress code?",
            "What should I wear to the office?",
            "Is there a dress code at Brightwave Logistics?",
            "Can I wear jeans to work?",
            "dress code?",
            "Do I need to wear a suit?",
            "What's appropriate clothing for work here?",
            "What are the clothing rules in the warehouse?",
            "How formal is the office attire?",
        ],
        answers=[
            "The dress code is smart casual; jeans are fine, and steel-toe boots are required in the warehouse.",
            "Brightwave Logistics has a smart casual dress code, with steel-toe boots required in warehouse areas.",
            "Smart casual is the dress code, jeans included, but steel-toe boots are required in the warehouse.",
        ],
        held_out=[
            ("Is a shirt and tie expected on my first day, or what's the standard attire?", None),
        ],
    ),
    dict(
        id="pet_policy", topic="Pet policy", value="Dogs in the office on Fridays only; never in the warehouse",
        key=r"fridays?",
        questions=[
            "Can I bring my dog to the office?",
            "What's the pet policy?",
            "Are pets allowed at work?",
            "Is there a dog-friendly day?",
            "pet policy?",
            "Which day of the week can I bring my pet along?",
            "When can employees bring dogs into the office?",
            "Are animals allowed in the office?",
            "My puppy hates being alone. Can it come to work with me?",
        ],
        answers=[
            "Dogs are welcome in the office on Fridays only, and they are not allowed in the warehouse.",
            "Brightwave Logistics is dog-friendly on Fridays; pets are not allowed in the warehouse.",
            "You can bring a well-behaved dog to the office on Fridays, but never into the warehouse.",
        ],
        held_out=[
            ("My dog is a golden retriever. Is she ever allowed to come with me to my desk?", None),
        ],
    ),
    dict(
        id="volunteer_days", topic="Volunteer days", value="2 paid days per year",
        key=r"\b(2|two)\b[^.]{0,25}\bdays?\b",
        questions=[
            "Do we get volunteer days?",
            "How many paid volunteering days are there?",
            "Can I take time off to volunteer for a charity?",
            "What is the volunteer leave policy?",
            "volunteer days?",
            "I'd like to help at a food bank. Does the company give paid time for that?",
            "How many days a year can I spend volunteering on company time?",
            "Is community service time paid at Brightwave?",
            "What's the annual allowance for charity work days?",
        ],
        answers=[
            "Employees get 2 paid volunteer days per year to support a charity or community cause.",
            "Brightwave Logistics offers 2 paid volunteer days each year.",
            "You can take 2 paid volunteer days every year for charity work.",
        ],
        held_out=[
            ("How much paid time per year may I spend volunteering for a nonprofit?", None),
        ],
    ),
    dict(
        id="performance_reviews", topic="Performance reviews", value="Twice a year, April and October",
        key=r"april.{0,40}october|october.{0,40}april",
        questions=[
            "When are performance reviews?",
            "How often do we have performance reviews?",
            "What months are appraisals held?",
            "When is my next performance evaluation?",
            "performance review schedule?",
            "How many times a year are reviews done?",
            "When does the review cycle happen at Brightwave?",
            "Are performance appraisals annual or twice a year?",
            "When will my manager assess my performance formally?",
        ],
        answers=[
            "Performance reviews happen twice a year, in April and October.",
            "Brightwave Logistics holds performance reviews twice a year, in April and October.",
            "Formal performance reviews take place twice a year, every April and October.",
        ],
        held_out=[
            ("During which months does the formal assessment of my work take place?", None),
        ],
    ),
    dict(
        id="leave_requests", topic="Requesting leave", value="Beacon HR portal, manager approves",
        key=r"beacon",
        questions=[
            "How do I request vacation?",
            "Where do I submit a leave request?",
            "What's the process for booking time off?",
            "Which system do I use to apply for annual leave?",
            "how to book leave?",
            "Who approves my time-off requests and where do I file them?",
            "I want to take next Friday off. How do I ask for it?",
            "Where can I log my days off?",
            "What tool do we use to request PTO?",
        ],
        answers=[
            "Submit leave requests in the Beacon HR portal, where your manager approves them.",
            "You request time off through the Beacon HR portal, and your manager approves it there.",
            "All leave requests go through the Beacon HR portal for manager approval.",
        ],
        held_out=[
            ("What's the name of the system for putting in time-off applications?", None),
        ],
    ),
    dict(
        id="phone_allowance", topic="Phone allowance", value="$35 per month",
        key=r"\b35\b",
        questions=[
            "Is there a phone allowance?",
            "Does the company pay for my mobile phone?",
            "How much is the monthly phone stipend?",
            "Can I expense my cell phone bill?",
            "phone allowance?",
            "I use my own mobile for work calls. Is that reimbursed?",
            "What's the mobile allowance at Brightwave?",
            "How much do we get each month toward our phone plan?",
            "Will Brightwave contribute to my cellphone costs?",
        ],
        answers=[
            "Employees receive a mobile phone allowance of $35 per month.",
            "Brightwave Logistics pays a $35 monthly allowance toward your phone bill.",
            "You get $35 per month to cover your mobile phone plan.",
        ],
        held_out=[
            ("What monthly amount goes toward my cellular bill since I use the device for work?", None),
        ],
    ),
]


def _norm(text):
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def train_rows():
    """(fact_id, row) pairs for train.jsonl, in a fixed shuffled order."""
    pairs = []
    for fact in FACTS:
        answers = fact["answers"]
        for i, question in enumerate(fact["questions"]):
            pairs.append((fact["id"], {"instruction": question, "output": answers[i % len(answers)]}))
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


def check():
    """Fail loudly if the hand-written data is inconsistent."""
    problems = []
    ids = [f["id"] for f in FACTS]
    if len(ids) != len(set(ids)):
        problems.append("duplicate fact ids")
    train_norm = {_norm(q) for f in FACTS for q in f["questions"]}
    all_answers = [(f["id"], a) for f in FACTS for a in f["answers"]]
    if len(train_norm) != sum(len(f["questions"]) for f in FACTS):
        problems.append("duplicate training questions")
    for fact in FACTS:
        keys = [fact["key"]] + [k for _, k in fact["held_out"] if k]
        for key in keys:
            rx = re.compile(key, re.IGNORECASE)
            for answer in fact["answers"]:
                if not rx.search(answer):
                    problems.append(f"{fact['id']}: key {key!r} misses its own answer {answer!r}")
            for other_id, answer in all_answers:
                if other_id != fact["id"] and rx.search(answer):
                    problems.append(f"{fact['id']}: key {key!r} also matches {other_id} answer {answer!r}")
        for question, _ in fact["held_out"]:
            nq = _norm(question)
            if nq in train_norm or any(nq in t or t in nq for t in train_norm if len(t) > 12):
                problems.append(f"{fact['id']}: held-out question overlaps a training question: {question!r}")
    if problems:
        sys.exit("hr-bot data check failed:\n  " + "\n  ".join(problems))


def write_jsonl(path, rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def facts_md():
    lines = [
        "# hr-bot facts",
        "",
        f"Fictional HR policies of **{COMPANY}** used by the `hr-bot` example. Generated by `build.py`;",
        "edit the lists there and rerun it rather than editing the `.jsonl` files by hand.",
        "",
        f"{len(FACTS)} facts; `train.jsonl` has {sum(len(f['questions']) for f in FACTS)} rows "
        f"(9-10 paraphrased questions per fact), `held_out.jsonl` has "
        f"{sum(len(f['held_out']) for f in FACTS)} differently worded questions with a `key_fact` regex.",
        "",
        "| # | id | Topic | Fact |",
        "|---|----|-------|------|",
    ]
    for n, fact in enumerate(FACTS, start=1):
        lines.append(f"| {n} | `{fact['id']}` | {fact['topic']} | {fact['value']} |")
    lines.append("")
    return "\n".join(lines)


def main():
    check()
    write_jsonl(os.path.join(HERE, "train.jsonl"), [row for _, row in train_rows()])
    write_jsonl(os.path.join(HERE, "held_out.jsonl"), held_out_rows())
    tmp = os.path.join(HERE, "facts.md.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(facts_md())
    os.replace(tmp, os.path.join(HERE, "facts.md"))
    print(f"hr-bot: {len(FACTS)} facts, {len(train_rows())} train rows, {len(held_out_rows())} held-out rows")


if __name__ == "__main__":
    main()
